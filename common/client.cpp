#include "common/client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <atomic>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
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

namespace {

std::atomic<bool> warm_connections{false};
// Well inside the relay's limit for a connection's first request (--handshake-timeout, 10 s).
constexpr auto spare_lifetime = std::chrono::seconds(2);

struct spare_key {
    const void* tls; // connections of different contexts (a device's certificate) are not mixed
    std::string host;
    std::uint16_t port;
    auto operator<=>(const spare_key&) const = default;
};

struct spare_pool {
    std::mutex mutex;
    // Weak: the coroutine that opened a spare owns it, so no connection outlives the io_context
    // (a process ends with its io_context; a static pool would free sockets after it).
    std::map<spare_key, std::weak_ptr<tls_stream>> ready;
    std::set<spare_key> opening;
};

spare_pool& spares()
{
    static spare_pool pool;
    return pool;
}

std::shared_ptr<tls_stream> take_spare(const spare_key& key)
{
    std::shared_ptr<tls_stream> stream;
    {
        auto& pool = spares();
        std::lock_guard lock(pool.mutex);
        auto it = pool.ready.find(key);
        if (it != pool.ready.end()) {
            stream = it->second.lock();
            pool.ready.erase(it);
        }
    }
    if (stream && !stream->idle_and_open())
        stream.reset();
    return stream;
}

asio::awaitable<void> keep_spare(ssl::context& tls, spare_key key)
{
    auto& pool = spares();
    bool start = false;
    {
        std::lock_guard lock(pool.mutex);
        start = !pool.ready.contains(key) && pool.opening.insert(key).second;
    }
    if (!start)
        co_return;
    auto connected = co_await connect_tls(tls, key.host, key.port, std::chrono::seconds(10));
    std::shared_ptr<tls_stream> stream = std::get<1>(connected);
    bool kept = false;
    {
        std::lock_guard lock(pool.mutex);
        pool.opening.erase(key);
        if (stream && !pool.ready.contains(key)) {
            stream->expires_never();
            pool.ready[key] = stream;
            kept = true;
        }
    }
    if (!kept)
        co_return;
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer timer(ex, spare_lifetime);
    co_await timer.async_wait(use_nothrow);
    bool unused = false;
    {
        std::lock_guard lock(pool.mutex);
        auto it = pool.ready.find(key);
        if (it != pool.ready.end() && it->second.lock() == stream) {
            pool.ready.erase(it);
            unused = true;
        }
    }
    if (unused)
        drop_connection(*stream);
}

// A connection for a stream: the spare one when there is one.
asio::awaitable<std::pair<failure, std::shared_ptr<tls_stream>>>
connect_for_stream(ssl::context& tls, const std::string& host, std::uint16_t port, bool& was_spare)
{
    was_spare = false;
    if (warm_connections) {
        std::shared_ptr<tls_stream> spare = take_spare(spare_key{&tls, host, port});
        if (spare) {
            auto ex = co_await asio::this_coro::executor;
            spare->rebind(ex);
            was_spare = true;
            co_return std::pair{failure{}, spare};
        }
    }
    auto connected = co_await connect_tls(tls, host, port, std::chrono::seconds(30));
    co_return connected;
}

// After a stream's request or join went through (its connection has read the relay's session
// ticket, so the next handshake resumes): a connection for the next stream.
asio::awaitable<void> open_spare_for_next(ssl::context& tls, const std::string& host, std::uint16_t port)
{
    if (!warm_connections)
        co_return;
    auto ex = co_await asio::this_coro::executor;
    asio::co_spawn(ex, keep_spare(tls, spare_key{&tls, host, port}), asio::detached);
}

} // namespace

void set_warm_connections(bool on) { warm_connections = on; }

asio::awaitable<std::tuple<error_code, tcp::resolver::results_type>>
resolve_within(std::string host, std::uint16_t port, std::chrono::steady_clock::duration timeout)
{
    // An address needs no look-up: getaddrinfo would only hand it to the resolver thread and
    // back (two thread switches for every connection to a relay or target given by address).
    error_code not_address;
    auto address = asio::ip::make_address(host, not_address);
    if (!not_address)
        co_return std::tuple{error_code{}, tcp::resolver::results_type::create(tcp::endpoint(address, port), host,
                                                                               std::to_string(port))};
    // getaddrinfo runs on the io_context's one resolver thread, where a DNS server that does not
    // answer holds it (and every look-up queued behind it) for the resolver's own timeouts, tens of
    // seconds, and cancelling does not interrupt it: the caller stops waiting at its deadline and
    // the late answer is dropped.
    struct lookup {
        explicit lookup(const asio::any_io_executor& ex) : resolver(ex), answered(ex) {}
        tcp::resolver resolver;
        asio::steady_timer answered; // cancelled when the answer is in
        bool done = false;
        error_code ec;
        tcp::resolver::results_type results;
    };
    auto ex = co_await asio::this_coro::executor;
    auto l = std::make_shared<lookup>(ex);
    l->answered.expires_after(timeout);
    l->resolver.async_resolve(host, std::to_string(port), [l](error_code ec, tcp::resolver::results_type results) {
        l->done = true;
        l->ec = ec;
        l->results = std::move(results);
        l->answered.cancel();
    });
    auto waited = co_await l->answered.async_wait(use_nothrow);
    (void)waited;
    if (!l->done)
        co_return std::tuple{error_code(asio::error::timed_out), tcp::resolver::results_type{}};
    co_return std::tuple{l->ec, l->results};
}

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
    auto resolved = co_await resolve_within(dial_host, dial_port, timeout);
    auto& rec = std::get<0>(resolved);
    auto& endpoints = std::get<1>(resolved);
    if (rec == asio::error::timed_out)
        co_return std::pair{local_failure("cannot resolve " + dialled + ": no answer from DNS in " +
                                          std::to_string(timeout.count()) + "s"),
                            nullptr};
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

    std::shared_ptr<tls_stream> stream;
    beast::flat_buffer buffer;
    std::optional<http::response_parser<http::string_body>> parser;
    for (int attempt = 0;; ++attempt) {
        bool was_spare = false;
        auto connected = co_await connect_for_stream(tls, service.host(), service.port(), was_spare);
        if (std::get<0>(connected))
            co_return std::pair{std::get<0>(connected), response};
        stream = std::get<1>(connected);
        stream->expires_after(total);
        auto written = co_await http::async_write(*stream, req, use_nothrow);
        error_code wec = std::get<0>(written), rec;
        parser.emplace();
        parser->body_limit(64 * 1024);
        buffer.clear();
        if (!wec) {
            auto read = co_await http::async_read(*stream, buffer, *parser, use_nothrow);
            rec = std::get<0>(read);
            if (!rec) {
                co_await open_spare_for_next(tls, service.host(), service.port());
                break;
            }
        }
        // A connection opened ahead that the relay closed meanwhile: once more on a new one.
        if (was_spare && attempt == 0 && !parser->got_some()) {
            drop_connection(*stream);
            continue;
        }
        if (wec)
            co_return std::pair{local_failure("cannot send the stream request: " + wec.message()), response};
        co_return std::pair{local_failure("no answer from the relay: " + rec.message()), response};
    }
    auto& res = parser->get();
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
    if (stream) {
        auto joined = co_await join_stream(stream, *parsed, response.authorization_token);
        co_return joined;
    }
    for (int attempt = 0;; ++attempt) {
        bool was_spare = false;
        auto connected = co_await connect_for_stream(tls, parsed->host, parsed->port, was_spare);
        if (std::get<0>(connected))
            co_return std::pair{std::get<0>(connected), nullptr};
        auto joined = co_await join_stream(std::get<1>(connected), *parsed, response.authorization_token);
        if (std::get<1>(joined))
            co_await open_spare_for_next(tls, parsed->host, parsed->port);
        // A connection opened ahead that the relay closed meanwhile: once more on a new one.
        if (std::get<1>(joined) || !was_spare || attempt > 0)
            co_return joined;
    }
}

} // namespace sg::client
