#include "common/client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <algorithm>
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

// A relay thread's index as a header says it, -1 when it is not one.
int parse_lane(std::string_view text)
{
    int lane = 0;
    if (text.empty() || text.size() > 4)
        return -1;
    for (char c : text) {
        if (c < '0' || c > '9')
            return -1;
        lane = lane * 10 + (c - '0');
    }
    return lane;
}

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

// A connection waiting for this process's next stream to the same relay: a TLS connection ready
// for an HTTP request (a spare opened ahead, or a request's connection given back), or a stream's
// WebSocket the relay keeps after a clean end of stream, ready for a join message (docs/PROTOCOL.md,
// "Connections kept for the next stream").
template <class Connection>
struct held_connection {
    // Weak: the coroutine that holds it owns it, so no connection outlives the io_context (a
    // process ends with its io_context; a static pool would free sockets after it).
    std::weak_ptr<Connection> connection;
    std::shared_ptr<asio::steady_timer> until; // the holder's wait, cut short when it is taken
    int lane = -1;                             // a kept WebSocket: the relay thread it lives on
};

template <class Connection>
using held_lists = std::map<spare_key, std::vector<held_connection<Connection>>>; // newest last

struct spare_pool {
    std::mutex mutex;
    held_lists<tls_stream> ready;
    std::set<spare_key> opening;
    held_lists<wss_stream> kept;
    // Which joined WebSockets the relay keeps, and where they go back after their stream.
    std::map<const wss_stream*, std::pair<spare_key, int>> keepable;
};

spare_pool& spares()
{
    static spare_pool pool;
    return pool;
}

bool usable(tls_stream& stream) { return stream.idle_and_open(); }
bool usable(wss_stream& ws) { return ws.is_open(); }

asio::awaitable<void> let_go(tls_stream& stream)
{
    drop_connection(stream);
    co_return;
}
asio::awaitable<void> let_go(wss_stream& ws) { co_await ws.async_close(websocket::close_code::normal, use_nothrow); }

// The newest held connection for key (of this lane, when both say one), taken out of the pool.
template <class Connection>
std::pair<std::shared_ptr<Connection>, int> take_held(held_lists<Connection>& lists, const spare_key& key, int lane)
{
    auto& pool = spares();
    for (;;) {
        std::shared_ptr<Connection> connection;
        int its_lane = -1;
        {
            std::lock_guard lock(pool.mutex);
            auto it = lists.find(key);
            if (it == lists.end())
                return {};
            auto& list = it->second;
            std::size_t i = list.size();
            while (i > 0 && lane >= 0 && list[i - 1].lane >= 0 && list[i - 1].lane != lane)
                --i;
            if (i == 0)
                return {};
            auto held = std::move(list[i - 1]);
            list.erase(list.begin() + static_cast<std::ptrdiff_t>(i - 1));
            asio::post(held.until->get_executor(), [until = held.until] { until->cancel(); });
            connection = held.connection.lock();
            its_lane = held.lane;
        }
        if (connection && usable(*connection))
            return {connection, its_lane};
    }
}

// Holds a connection for spare_lifetime, unless a stream takes it first; then lets it go.
template <class Connection>
asio::awaitable<void> hold(held_lists<Connection>& lists, spare_key key, int lane, std::shared_ptr<Connection> connection)
{
    auto& pool = spares();
    auto until = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor, spare_lifetime);
    {
        std::lock_guard lock(pool.mutex);
        lists[key].push_back(held_connection<Connection>{connection, until, lane});
    }
    co_await until->async_wait(use_nothrow);
    bool unused = false;
    {
        std::lock_guard lock(pool.mutex);
        auto& list = lists[key];
        auto it = std::find_if(list.begin(), list.end(), [&](const auto& h) { return h.until == until; });
        if (it != list.end()) {
            list.erase(it);
            unused = true;
        }
    }
    if (unused)
        co_await let_go(*connection);
}

std::shared_ptr<tls_stream> take_spare(const spare_key& key) { return take_held(spares().ready, key, -1).first; }

void give_back(spare_key key, std::shared_ptr<tls_stream> stream)
{
    stream->expires_never();
    auto ex = stream->get_executor();
    asio::co_spawn(ex, hold(spares().ready, std::move(key), -1, std::move(stream)), asio::detached);
}

asio::awaitable<void> keep_spare(ssl::context& tls, spare_key key)
{
    auto& pool = spares();
    bool start = false;
    {
        std::lock_guard lock(pool.mutex);
        auto it = pool.ready.find(key);
        start = (it == pool.ready.end() || it->second.empty()) && pool.opening.insert(key).second;
    }
    if (!start)
        co_return;
    auto connected = co_await connect_tls(tls, key.host, key.port, std::chrono::seconds(10));
    std::shared_ptr<tls_stream> stream = std::get<1>(connected);
    {
        std::lock_guard lock(pool.mutex);
        pool.opening.erase(key);
    }
    if (stream)
        give_back(key, stream);
}

void remember_keepable(const wss_stream& ws, const spare_key& key, int lane)
{
    auto& pool = spares();
    std::lock_guard lock(pool.mutex);
    pool.keepable[&ws] = {key, lane};
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

// The service's SAS token for stream requests: signed once an hour (valid for one), not per
// stream; a token is renewed while it still has ten minutes.
std::string service_token(const connection_string& service)
{
    struct cached {
        std::string host, key, key_name, token;
        std::int64_t expiry = 0;
    };
    static std::mutex mutex;
    static cached last;
    const std::int64_t now = unix_now();
    std::lock_guard lock(mutex);
    if (last.expiry - now < 600 || last.host != service.host_name || last.key != service.shared_access_key ||
        last.key_name != service.shared_access_key_name) {
        last = cached{service.host_name, service.shared_access_key, service.shared_access_key_name,
                      make_sas_token(service.host_name, service.shared_access_key, service.shared_access_key_name,
                                     now + 3600),
                      now + 3600};
    }
    return last.token;
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
    req.set(http::field::authorization, service_token(service));
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
            if (!rec)
                break;
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
    const bool reusable = res.keep_alive() && buffer.size() == 0;
    if (accepted && reusable) {
        // connect_stream joins through it, or gives it back for the next request.
        response.connection = stream;
        response.connection_host = service.host();
        response.connection_port = service.port();
    } else if (reusable && warm_connections) {
        give_back(spare_key{&tls, service.host(), service.port()}, stream);
    } else {
        drop_connection(*stream);
        co_await open_spare_for_next(tls, service.host(), service.port());
    }
    if (auto lane = res[protocol::lane_header]; !lane.empty())
        response.lane = parse_lane(lane);

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
join_stream(const std::shared_ptr<tls_stream>& stream, const spare_key& key, const wss_url& where,
            const std::string& authorization_token)
{
    auto ws = std::make_shared<wss_stream>(std::move(*stream));
    configure_stream_websocket(*ws, beast::role_type::client);
    const bool ask_to_keep = warm_connections;
    ws->set_option(websocket::stream_base::decorator([token = authorization_token, ask_to_keep](websocket::request_type& req) {
        req.set(http::field::authorization, "Bearer " + token);
        req.set(http::field::user_agent, "streamgate/0.1");
        if (ask_to_keep)
            req.set(protocol::reuse_header, "1");
    }));
    websocket::response_type res;
    auto [ec] = co_await ws->async_handshake(res, host_header(where.host, where.port), where.target, use_nothrow);
    if (ec) {
        if (res.result_int() != 0 && res.result() != http::status::switching_protocols)
            co_return std::pair{protocol::parse_error_body(res.body(), res.result_int()), nullptr};
        co_return std::pair{local_failure("cannot join the stream: " + ec.message()), nullptr};
    }
    if (auto kept = res[protocol::reuse_header]; ask_to_keep && !kept.empty())
        remember_keepable(*ws, key, parse_lane(kept));
    co_return std::pair{failure{}, ws};
}

// One text message on a WebSocket the relay kept from an earlier stream, and the relay's answer.
struct kept_answer {
    bool gone = false; // the connection had gone before an answer: a new connection may still try
    failure refused;   // the relay closed it with a code: the message itself was refused
    bool text = false;
    std::string data;
};

// wait: how long the answer may take (the relay answers no pings meanwhile); zero for the usual.
asio::awaitable<kept_answer> ask_on_kept(wss_stream& ws, const std::string& message, std::chrono::seconds wait)
{
    kept_answer answer;
    ws.text(true);
    auto written = co_await ws.async_write(asio::buffer(message), use_nothrow);
    ws.binary(true);
    if (std::get<0>(written)) {
        answer.gone = true;
        co_return answer;
    }
    websocket::stream_base::timeout usual{};
    ws.get_option(usual);
    if (wait.count() > 0) {
        websocket::stream_base::timeout waiting = usual;
        waiting.idle_timeout = wait;
        waiting.keep_alive_pings = false;
        ws.set_option(waiting);
    }
    beast::flat_buffer buffer;
    auto read = co_await ws.async_read(buffer, use_nothrow);
    ws.set_option(usual);
    auto ec = std::get<0>(read);
    auto code = ws.reason().code;
    if (ec == websocket::error::closed &&
        (code == websocket::close_code::policy_error || code == websocket::close_code::protocol_error))
        answer.refused = protocol::parse_close_reason(std::string(ws.reason().reason.data(), ws.reason().reason.size()));
    else if (ec)
        answer.gone = true;
    answer.text = ws.got_text();
    answer.data = beast::buffers_to_string(buffer.data());
    co_return answer;
}

// Joins on a kept WebSocket: one message there, one back. The second of the pair says whether a
// new connection may still try (the kept one had gone); false with a failure when the relay
// refused the join itself.
asio::awaitable<std::pair<failure, bool>> join_kept(wss_stream& ws, const wss_url& where, const std::string& token,
                                                    const std::string& accept_request_id = {})
{
    const std::string join =
        protocol::serialize(protocol::join_message{where.target, "Bearer " + token, accept_request_id});
    kept_answer answer = co_await ask_on_kept(ws, join, std::chrono::seconds(0));
    if (answer.gone)
        co_return std::pair{failure{}, true};
    if (answer.refused)
        co_return std::pair{answer.refused, false};
    if (!answer.text || !protocol::is_joined_message(answer.data))
        co_return std::pair{local_failure("the relay answered a join with something else than \"joined\""), false};
    co_return std::pair{failure{}, false};
}

// Joins on a kept WebSocket of the lane, the next one when one had gone (a device's accept, if
// any, goes with it): nullopt when none is left, to join the usual way.
asio::awaitable<std::optional<std::pair<failure, std::shared_ptr<wss_stream>>>>
join_some_kept(const spare_key& key, const wss_url& where, const std::string& token, int lane,
               const std::string& accept_request_id = {})
{
    while (warm_connections) {
        auto taken = take_held(spares().kept, key, lane);
        std::shared_ptr<wss_stream> kept = taken.first;
        if (!kept)
            break;
        auto joined = co_await join_kept(*kept, where, token, accept_request_id);
        if (std::get<1>(joined))
            continue;
        if (std::get<0>(joined))
            co_return std::pair{std::get<0>(joined), std::shared_ptr<wss_stream>{}};
        remember_keepable(*kept, key, taken.second);
        co_return std::pair{failure{}, kept};
    }
    co_return std::nullopt;
}

// The "open" on a kept WebSocket. The second of the pair says whether the caller may still make
// the stream with a POST (the kept connection had gone before an answer).
asio::awaitable<std::pair<opened_stream, bool>> open_on_kept(wss_stream& ws, const connection_string& service,
                                                               const stream_request& request)
{
    opened_stream out;
    out.response.stream_name = request.stream_name;
    protocol::open_message m{request.device_id, request.stream_name, service_token(service),
                             static_cast<int>(request.connect_timeout.count()),
                             static_cast<int>(request.response_timeout.count())};
    const std::string text = protocol::serialize(m);
    // The answer comes when the device's does, which may take the whole response timeout.
    kept_answer answer = co_await ask_on_kept(ws, text, request.response_timeout + std::chrono::seconds(10));
    if (answer.gone)
        co_return std::pair{out, true};
    auto parsed = answer.text ? protocol::parse_open_answer(answer.data) : std::nullopt;
    if (answer.refused)
        out.error = answer.refused;
    else if (!parsed)
        out.error = local_failure("the relay answered an open with something else than joined, rejected or error");
    else if (parsed->joined)
        out.response.accepted = true;
    else if (parsed->rejected)
        out.response.reason = parsed->reason;
    else
        out.error = parsed->error;
    co_return std::pair{out, false};
}

} // namespace

asio::awaitable<opened_stream> open_stream(ssl::context& tls, const connection_string& service, stream_request request)
{
    spare_key key{&tls, service.host(), service.port()};
    while (warm_connections) {
        auto taken = take_held(spares().kept, key, -1);
        std::shared_ptr<wss_stream> kept = taken.first;
        if (!kept)
            break;
        auto tried = co_await open_on_kept(*kept, service, request);
        if (std::get<1>(tried))
            continue; // that one had gone: the next kept one, or a POST
        opened_stream opened = std::move(std::get<0>(tried));
        if (opened.response.accepted) {
            remember_keepable(*kept, key, taken.second);
            opened.ws = kept;
        } else if (kept->is_open()) { // answered, and still kept for the next stream
            asio::co_spawn(kept->get_executor(), hold(spares().kept, key, taken.second, kept), asio::detached);
        }
        co_return opened;
    }
    opened_stream opened;
    auto created = co_await create_stream(tls, service, request);
    opened.error = std::get<0>(created);
    opened.response = std::move(std::get<1>(created));
    if (opened.error || !opened.response.accepted)
        co_return opened;
    auto joined = co_await connect_stream(tls, opened.response);
    opened.error = std::get<0>(joined);
    opened.ws = std::get<1>(joined);
    co_return opened;
}

asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
accept_stream(ssl::context& tls, device_connection& connection, const incoming_stream_request& request)
{
    auto parsed = parse_wss_url(request.url);
    if (parsed) {
        spare_key key{&tls, parsed->host, parsed->port};
        auto on_kept =
            co_await join_some_kept(key, *parsed, request.authorization_token, request.lane, request.request_id);
        if (on_kept) {
            if (auto& f = std::get<0>(*on_kept))
                connection.reject(request, "the relay refused the join: " + f.describe());
            co_return std::move(*on_kept);
        }
    }
    connection.accept(request);
    auto joined = co_await connect_stream(tls, request.url, request.authorization_token, request.lane);
    co_return joined;
}

bool connection_kept(const wss_stream& ws)
{
    auto& pool = spares();
    std::lock_guard lock(pool.mutex);
    return pool.keepable.contains(&ws);
}

void stream_finished(const std::shared_ptr<wss_stream>& ws, bool clean)
{
    std::optional<std::pair<spare_key, int>> keep;
    {
        auto& pool = spares();
        std::lock_guard lock(pool.mutex);
        auto it = pool.keepable.find(ws.get());
        if (it == pool.keepable.end())
            return;
        if (clean)
            keep = std::move(it->second);
        pool.keepable.erase(it);
    }
    if (keep && ws->is_open())
        asio::co_spawn(ws->get_executor(), hold(spares().kept, std::move(keep->first), keep->second, ws), asio::detached);
}

asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>>
connect_stream(ssl::context& tls, std::string url, std::string authorization_token, int lane)
{
    stream_response response;
    response.url = std::move(url);
    response.authorization_token = std::move(authorization_token);
    response.lane = lane;
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
    spare_key key{&tls, parsed->host, parsed->port};
    auto on_kept = co_await join_some_kept(key, *parsed, response.authorization_token, response.lane);
    if (on_kept) {
        if (stream) // the POST's connection serves the next request
            give_back(key, std::move(stream));
        co_return std::move(*on_kept);
    }
    if (stream) {
        auto joined = co_await join_stream(stream, key, *parsed, response.authorization_token);
        if (std::get<1>(joined))
            co_await open_spare_for_next(tls, parsed->host, parsed->port);
        co_return joined;
    }
    for (int attempt = 0;; ++attempt) {
        bool was_spare = false;
        auto connected = co_await connect_for_stream(tls, parsed->host, parsed->port, was_spare);
        if (std::get<0>(connected))
            co_return std::pair{std::get<0>(connected), nullptr};
        auto joined = co_await join_stream(std::get<1>(connected), key, *parsed, response.authorization_token);
        if (std::get<1>(joined))
            co_await open_spare_for_next(tls, parsed->host, parsed->port);
        // A connection opened ahead that the relay closed meanwhile: once more on a new one.
        if (std::get<1>(joined) || !was_spare || attempt > 0)
            co_return joined;
    }
}

} // namespace sg::client
