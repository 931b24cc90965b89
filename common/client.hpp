#pragma once
// The client API of Streamgate, used by both proxies and the examples:
//   service side: create_stream() asks the relay to open a stream to a device, then
//                 connect_stream() joins the streaming endpoint it answered with;
//   device side:  device_connection keeps the control connection, hands out stream requests
//                 and sends accept/reject; the device then joins with connect_stream().
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <boost/asio/ssl/context.hpp>
#include "common/connection_string.hpp"
#include "common/control_link.hpp"
#include "common/error.hpp"
#include "common/proxy_url.hpp"
#include "common/websocket.hpp"

namespace sg::client {

struct stream_request {
    std::string device_id;
    std::string stream_name = "TestStream";
    std::chrono::seconds connect_timeout{60};
    std::chrono::seconds response_timeout{60};
};

struct stream_response {
    std::string stream_name;
    bool accepted = false;
    std::string url;                 // wss://host/bridges/{hub}/{device}/{streamId}
    std::string authorization_token; // single use, for this side only
    std::string reason;              // the device's reason when it rejected
    // The POST's connection, kept open when the stream was accepted: connect_stream(tls, response)
    // joins through it when the streaming URL names the same host and port (one TCP and TLS
    // handshake less per stream, one CONNECT less through a proxy).
    std::shared_ptr<tls_stream> connection;
    std::string connection_host;
    std::uint16_t connection_port = 0;
    int lane = -1; // the relay thread the stream runs on (x-streamgate-lane), -1 when not said
};

// The HTTP proxy every connection to the relay goes through (HTTP CONNECT), unless NO_PROXY says
// otherwise. Process-wide, like set_default_liveness: set once at start-up before any connection
// exists (the proxies and examples resolve --proxy / HTTPS_PROXY / NO_PROXY into it). Until set,
// connections are direct.
void set_proxy_settings(proxy_settings settings);
const proxy_settings& current_proxy_settings();

// Streams that come one after another start with a connection opened ahead: after each stream's
// connection to the relay, another one is opened (TCP and TLS handshake done) and kept for two
// seconds, for the next stream. Idle processes open nothing. Process-wide, off until set (both
// proxies turn it on unless --warm-connections false).
// On, a stream's connection also asks the relay to keep it after a clean end of stream
// (x-streamgate-reuse): it then waits two seconds for this process's next stream to the same
// relay, which joins on it with one message instead of a new TCP and TLS handshake.
void set_warm_connections(bool on);

// Resolves host:port, or asio::error::timed_out when no answer came within timeout (a look-up
// stuck in the system resolver is abandoned, its answer dropped).
asio::awaitable<std::tuple<error_code, tcp::resolver::results_type>>
resolve_within(std::string host, std::uint16_t port, std::chrono::steady_clock::duration timeout);

// Opens a TLS connection to host:port, trying every address the name resolves to; through the
// proxy of current_proxy_settings() when it applies to host (the proxy then resolves the name).
// SNI and certificate verification are against host either way. The name look-up, the TCP
// connect and the handshake each get the timeout.
asio::awaitable<std::pair<failure, std::shared_ptr<tls_stream>>>
connect_tls(asio::ssl::context& tls, std::string host, std::uint16_t port, std::chrono::seconds timeout);

asio::awaitable<std::pair<failure, stream_response>>
create_stream(asio::ssl::context& tls, const connection_string& service, stream_request request);

// Joins a streaming endpoint; the stream is configured for raw bytes (pump with ws_end). A
// connection the relay kept from an earlier stream (of the stream's lane, when known) is used
// first.
asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
connect_stream(asio::ssl::context& tls, std::string url, std::string authorization_token, int lane = -1);
// The service side's join: on a kept connection, else through response.connection when it can
// (it is taken), else anew.
asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
connect_stream(asio::ssl::context& tls, stream_response& response);

// The service side's whole stream set-up: on a kept connection, one "open" message that the
// relay answers once the device did (the request and the join in one round trip); else
// create_stream, then connect_stream. ws is set when the stream was accepted and joined;
// a device's rejection is no failure (response.accepted false, response.reason).
struct opened_stream {
    failure error;
    stream_response response;
    std::shared_ptr<wss_stream> ws;
};
asio::awaitable<opened_stream> open_stream(asio::ssl::context& tls, const connection_string& service,
                                           stream_request request);

// Whether the relay keeps this stream's connection after a clean end: pump it with
// ws_end(ws, true), then call stream_finished.
bool connection_kept(const wss_stream& ws);
// After the pump: a kept connection whose stream ended cleanly waits for the next stream; any
// other is forgotten (the pump closed it). Safe for every joined stream.
void stream_finished(const std::shared_ptr<wss_stream>& ws, bool clean);

struct incoming_stream_request {
    std::string request_id;
    std::string stream_name;
    std::string stream_id;
    std::string url;
    std::string authorization_token;
    int lane = -1; // the relay thread the stream runs on, -1 when not said
};

class device_connection {
public:
    // Opens the device's control connection, authenticated by a SAS token signed with the
    // connection string's key (valid for token_ttl).
    static asio::awaitable<std::pair<failure, std::shared_ptr<device_connection>>>
    connect(asio::ssl::context& tls, const connection_string& device,
            std::chrono::seconds token_ttl = std::chrono::hours(1));
    // The same through relay `host`:`port` instead of the connection string's HostName (a
    // cluster node): the token is still for the HostName, TLS is verified against `host`.
    static asio::awaitable<std::pair<failure, std::shared_ptr<device_connection>>>
    connect(asio::ssl::context& tls, const connection_string& device, std::string host, std::uint16_t port,
            std::chrono::seconds token_ttl = std::chrono::hours(1));

    // Runs until the connection ends and says why (a relay's close reason carries its code,
    // e.g. 400027 when a newer connection replaced this one). on_request runs on the
    // connection's executor and must not block; pass a named object (g++ 12 destroys temporaries
    // that live across a co_await twice when the coroutine frame is destroyed).
    asio::awaitable<failure> run(const std::function<void(incoming_stream_request)>& on_request);

    // Thread-safe.
    void accept(const incoming_stream_request& request);
    void reject(const incoming_stream_request& request, const std::string& reason);
    void close();

    explicit device_connection(std::shared_ptr<wss_stream> ws);

private:
    std::shared_ptr<control_link> link_;
};

// The device side's answer and join: on a kept connection of the stream's lane, one join message
// that also accepts the request; else accept() on the control connection, then connect_stream.
asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
accept_stream(asio::ssl::context& tls, device_connection& connection, const incoming_stream_request& request);

} // namespace sg::client
