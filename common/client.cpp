#include "common/client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <ctime>
#include "common/crypto.hpp"
#include "common/protocol.hpp"
#include "common/proxy_tunnel.hpp"
#include "common/sas_token.hpp"
#include "common/tls.hpp"

namespace sg::client {
namespace http = beast::http;
namespace ssl = asio::ssl;

namespace {

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

failure local_failure(std::string what) { return failure{0, std::move(what)}; }

bool is_ip_literal(const std::string& host)
{
    error_code ec;
    asio::ip::make_address(host, ec);
    return !ec;
}

// host[:port] as it goes into a Host header (IPv6 literals bracketed).
std::string host_header(const std::string& host, std::uint16_t port)
{
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return port == 443 ? h : h + ":" + std::to_string(port);
}

// Ends a finished request's connection without the TLS close_notify exchange: waiting for the
// relay's would delay the caller by a round trip, and the response was complete.
void drop_connection(tls_stream& stream)
{
    error_code ignored;
    beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
}

struct wss_url {
    std::string host;
    std::uint16_t port = 443;
    std::string target;
};

std::optional<wss_url> parse_wss_url(std::string_view url)
{
    constexpr std::string_view scheme = "wss://";
    if (url.substr(0, scheme.size()) != scheme)
        return std::nullopt;
    url.remove_prefix(scheme.size());
    auto slash = url.find('/');
    std::string_view authority = url.substr(0, slash);
    wss_url out;
    out.target = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
    try {
        connection_string probe;
        probe.host_name = std::string(authority);
        out.host = probe.host();
        out.port = probe.port();
    } catch (const std::exception&) {
        return std::nullopt;
    }
    if (out.host.empty())
        return std::nullopt;
    return out;
}

} // namespace

namespace {
// Written once at start-up, before any connection exists (see client.hpp).
proxy_settings process_proxy_settings;
} // namespace

void set_proxy_settings(proxy_settings settings) { process_proxy_settings = std::move(settings); }
const proxy_settings& current_proxy_settings() { return process_proxy_settings; }

asio::awaitable<std::pair<failure, std::shared_ptr<tls_stream>>>
connect_tls(ssl::context& tls, std::string host, std::uint16_t port, std::chrono::seconds timeout)
{
    auto ex = co_await asio::this_coro::executor;
    // Through a proxy the relay's name is resolved by the proxy: a corporate network may have no
    // DNS for outside names.
    const std::optional<http_proxy> proxy = process_proxy_settings.for_host(host);
    const std::string dial_host = proxy ? proxy->host : host;
    const std::uint16_t dial_port = proxy ? proxy->port : port;
    const std::string dialled = proxy ? "proxy " + proxy->authority() : "relay " + host_header(host, port);
    tcp::resolver resolver(ex);
    auto resolved = co_await resolver.async_resolve(dial_host, std::to_string(dial_port), use_nothrow);
    auto& rec = std::get<0>(resolved);
    auto& endpoints = std::get<1>(resolved);
    if (rec)
        co_return std::pair{local_failure("cannot resolve " + dialled + ": " + rec.message()), nullptr};

    auto stream = std::make_shared<tls_stream>(ex, tls);
    auto& tcp_layer = beast::get_lowest_layer(*stream);
    tcp_layer.expires_after(timeout); // the TCP connect
    stream->expires_after(timeout);   // and the TLS handshake
    // Every address is tried in turn: "localhost" may give ::1 first while the relay listens on 127.0.0.1.
    auto connected = co_await tcp_layer.async_connect(endpoints, use_nothrow);
    auto& cec = std::get<0>(connected);
    if (cec)
        co_return std::pair{local_failure("cannot connect to " + dialled + ": " + cec.message()), nullptr};
    if (proxy) {
        auto tunnel = co_await open_proxy_tunnel(tcp_layer, *proxy, host, port);
        if (tunnel)
            co_return std::pair{tunnel, nullptr};
    }
    tcp_layer.socket().set_option(tcp::no_delay(true));

    if (!is_ip_literal(host) && !SSL_set_tlsext_host_name(stream->native_handle(), host.c_str()))
        co_return std::pair{local_failure("cannot set TLS server name"), nullptr};
    stream->verify_host(host);
    offer_session(stream->native_handle(), host, port);
    auto [hec] = co_await stream->async_handshake(ssl::stream_base::client, use_nothrow);
    if (hec) {
        std::string detail = hec.message();
        long verify = SSL_get_verify_result(stream->native_handle());
        if (verify != X509_V_OK)
            detail = std::string("certificate verification failed: ") + X509_verify_cert_error_string(verify);
        co_return std::pair{local_failure("TLS handshake with relay " + host_header(host, port) + " failed: " + detail), nullptr};
    }
    co_return std::pair{failure{}, stream};
}

asio::awaitable<std::pair<failure, stream_response>>
create_stream(ssl::context& tls, const connection_string& service, stream_request request)
{
    stream_response response;
    response.stream_name = request.stream_name;
    auto total = request.connect_timeout + request.response_timeout + std::chrono::seconds(10);
    auto connected = co_await connect_tls(tls, service.host(), service.port(), std::chrono::seconds(30));
    auto& cf = std::get<0>(connected);
    auto& stream = std::get<1>(connected);
    if (cf)
        co_return std::pair{cf, response};

    http::request<http::empty_body> req{http::verb::post,
                                        "/twins/" + url_encode(request.device_id) + "/streams/" +
                                            url_encode(request.stream_name) + "?api-version=2020-09-30",
                                        11};
    req.set(http::field::host, host_header(service.host(), service.port()));
    req.set(http::field::user_agent, "streamgate/0.1");
    req.set(http::field::authorization,
            make_sas_token(service.host_name, service.shared_access_key, service.shared_access_key_name,
                           unix_now() + 3600));
    req.set("iothub-streaming-connect-timeout-in-seconds", std::to_string(request.connect_timeout.count()));
    req.set("iothub-streaming-response-timeout-in-seconds", std::to_string(request.response_timeout.count()));
    req.content_length(0);

    stream->expires_after(total);
    auto [wec, wn] = co_await http::async_write(*stream, req, use_nothrow);
    if (wec)
        co_return std::pair{local_failure("cannot send the stream request: " + wec.message()), response};

    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024);
    auto [rec, rn] = co_await http::async_read(*stream, buffer, parser, use_nothrow);
    if (rec)
        co_return std::pair{local_failure("no answer from the relay: " + rec.message()), response};
    auto& res = parser.get();
    bool accepted = res.result() == http::status::ok && res["iothub-streaming-is-accepted"] == "True";
    if (accepted && res.keep_alive() && buffer.size() == 0) {
        response.connection = stream;
        response.connection_host = service.host();
        response.connection_port = service.port();
    } else {
        drop_connection(*stream);
    }

    if (res.result() != http::status::ok)
        co_return std::pair{protocol::parse_error_body(res.body(), res.result_int()), response};
    response.accepted = res["iothub-streaming-is-accepted"] == "True";
    if (response.accepted) {
        response.url = std::string(res["iothub-streaming-url"]);
        response.authorization_token = std::string(res["iothub-streaming-auth-token"]);
    } else {
        boost::json::error_code jec;
        auto body = boost::json::parse(res.body(), jec);
        if (!jec && body.is_object())
            if (auto* reason = body.as_object().if_contains("reason"); reason && reason->is_string())
                response.reason = std::string(reason->as_string());
        if (response.reason.empty())
            response.reason = std::string(res["iothub-streaming-rejection-reason"]);
    }
    co_return std::pair{failure{}, response};
}

namespace {

// The WebSocket handshake of a join, over a TLS connection to where.host:where.port.
asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
join_stream(const std::shared_ptr<tls_stream>& stream, const wss_url& where, const std::string& authorization_token)
{
    auto ws = std::make_shared<wss_stream>(std::move(*stream));
    configure_stream_websocket(*ws, beast::role_type::client);
    ws->set_option(websocket::stream_base::decorator([token = authorization_token](websocket::request_type& req) {
        req.set(http::field::authorization, "Bearer " + token);
        req.set(http::field::user_agent, "streamgate/0.1");
    }));
    websocket::response_type res;
    auto [ec] = co_await ws->async_handshake(res, host_header(where.host, where.port), where.target, use_nothrow);
    if (ec) {
        if (res.result_int() != 0 && res.result() != http::status::switching_protocols)
            co_return std::pair{protocol::parse_error_body(res.body(), res.result_int()), nullptr};
        co_return std::pair{local_failure("cannot join the stream: " + ec.message()), nullptr};
    }
    co_return std::pair{failure{}, ws};
}

} // namespace

asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
connect_stream(ssl::context& tls, std::string url, std::string authorization_token)
{
    stream_response response;
    response.url = std::move(url);
    response.authorization_token = std::move(authorization_token);
    auto joined = co_await connect_stream(tls, response);
    co_return joined;
}

asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
connect_stream(ssl::context& tls, stream_response& response)
{
    auto parsed = parse_wss_url(response.url);
    std::shared_ptr<tls_stream> stream = std::move(response.connection);
    if (stream && (!parsed || parsed->host != response.connection_host || parsed->port != response.connection_port)) {
        drop_connection(*stream);
        stream.reset();
    }
    if (!parsed)
        co_return std::pair{local_failure("the relay answered an invalid streaming URL"), nullptr};
    if (!stream) {
        auto connected = co_await connect_tls(tls, parsed->host, parsed->port, std::chrono::seconds(30));
        auto& cf = std::get<0>(connected);
        if (cf)
            co_return std::pair{cf, nullptr};
        stream = std::get<1>(connected);
    }
    auto joined = co_await join_stream(stream, *parsed, response.authorization_token);
    co_return joined;
}

} // namespace sg::client
