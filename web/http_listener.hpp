#pragma once
// The browser-facing listener (http.cpp, gateway.cpp). Include only where Beast is needed.
#include <memory>
#include <string>
#include <boost/beast/ssl.hpp>
#include "common/websocket.hpp"

namespace sg::web {

class gateway_state;

// Serves one browser connection (plain or TLS, handshake done) until it closes.
template <class Stream>
asio::awaitable<void> serve_http(std::shared_ptr<gateway_state> state, Stream stream, std::string peer);

} // namespace sg::web
