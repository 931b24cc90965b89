#pragma once
// HTTP CONNECT through an outbound proxy. Internal to the client (Beast types): include only from
// translation units that do network I/O.
#include <cstdint>
#include <string>
#include "common/error.hpp"
#include "common/proxy_url.hpp"
#include "common/websocket.hpp"

namespace sg::client {

// The most a proxy's answer to CONNECT may take (status line and headers).
constexpr std::size_t max_proxy_response_header = 16 * 1024;

// `stream` is connected to `proxy`; asks it for a tunnel to host:port and reads its answer
// (within the stream's current expiry). On success the stream carries the tunnel: nothing of the
// proxy's answer is left unread. Errors name the proxy by host:port only, never its credentials.
asio::awaitable<failure> open_proxy_tunnel(beast::tcp_stream& stream, const http_proxy& proxy,
                                           const std::string& host, std::uint16_t port);

} // namespace sg::client
