// The gateway's HTTP(S) side: one coroutine per browser connection on its own strand, written
// once for plain TCP and TLS (explicit instantiations at the end). Requests go to api.cpp; the
// terminal route upgrades to a WebSocket carrying the terminal (binary: bytes both ways; text:
// JSON status from the gateway and {"resize":[cols,rows]} from the browser).
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include "common/websocket.hpp"
#include "web/http_listener.hpp"
#include "web/internal.hpp"

namespace sg::web {

namespace http = beast::http;
namespace json = boost::json;

namespace {

constexpr auto request_idle_timeout = std::chrono::seconds(60);

std::string cookie_value(std::string_view header, std::string_view name)
{
    while (!header.empty()) {
        auto semi = header.find(';');
        auto part = header.substr(0, semi);
        while (!part.empty() && part.front() == ' ')
            part.remove_prefix(1);
        if (part.size() > name.size() && part.substr(0, name.size()) == name && part[name.size()] == '=')
            return std::string(part.substr(name.size() + 1));
        if (semi == std::string_view::npos)
            break;
        header.remove_prefix(semi + 1);
    }
    return {};
}

request to_request(const http::request<http::string_body>& r, const std::string& peer)
{
    request req;
    req.method = std::string(r.method_string());
    req.target = std::string(r.target());
    auto q = req.target.find('?');
    req.path = req.target.substr(0, q);
    req.query = q == std::string::npos ? "" : req.target.substr(q + 1);
    req.cookie_session = cookie_value(r[http::field::cookie], "sg_session");
    req.csrf_header = std::string(r["X-CSRF-Token"]);
    req.content_type = std::string(r[http::field::content_type]);
    req.origin = std::string(r[http::field::origin]);
    req.host = std::string(r[http::field::host]);
    req.body = r.body();
    req.peer = peer;
    return req;
}

http::response<http::string_body> to_response(const reply& rep, unsigned version, bool keep_alive)
{
    http::response<http::string_body> res{static_cast<http::status>(rep.status), version};
    res.set(http::field::server, "streamgate-web");
    res.set(http::field::content_type, rep.content_type);
    res.set(http::field::cache_control, "no-store");
    res.set("X-Content-Type-Options", "nosniff");
    res.set("X-Frame-Options", "DENY");
    res.set("Referrer-Policy", "no-referrer");
    // xterm.js 3 sets inline styles; scripts come only from this origin.
    res.set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'");
    for (const auto& [k, v] : rep.headers)
        res.set(k, v);
    res.body() = rep.body;
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

template <class Stream>
class ws_browser : public browser_channel {
public:
    explicit ws_browser(std::shared_ptr<websocket::stream<Stream>> ws) : ws_(std::move(ws)) {}
    asio::awaitable<bool> output(std::string_view data) override
    {
        ws_->binary(true);
        auto r = co_await ws_->async_write(asio::buffer(data.data(), data.size()), use_nothrow);
        co_return !std::get<0>(r);
    }
    asio::awaitable<bool> status(std::string json_text) override
    {
        ws_->text(true);
        auto r = co_await ws_->async_write(asio::buffer(json_text), use_nothrow);
        co_return !std::get<0>(r);
    }

private:
    std::shared_ptr<websocket::stream<Stream>> ws_;
};

// Browser -> terminal: keystrokes and resizes, until the browser goes or the web session ends.
template <class Stream>
asio::awaitable<void> read_browser(std::shared_ptr<gateway_state> state, std::shared_ptr<websocket::stream<Stream>> ws,
                                   std::shared_ptr<ssh_terminal> terminal, std::string session_token)
{
    beast::flat_buffer buffer;
    for (;;) {
        buffer.clear();
        auto r = co_await ws->async_read(buffer, use_nothrow);
        if (std::get<0>(r))
            break;
        if (!state->find_session(session_token)) {
            terminal->stop("the web session ended (logged out or idle)");
            break;
        }
        std::string data = beast::buffers_to_string(buffer.data());
        if (ws->got_binary()) {
            co_await terminal->input(std::move(data));
            continue;
        }
        json::error_code ec;
        auto v = json::parse(data, ec);
        if (ec || !v.is_object())
            continue;
        auto* size = v.as_object().if_contains("resize");
        if (size && size->is_array() && size->as_array().size() == 2 && size->as_array()[0].is_int64() &&
            size->as_array()[1].is_int64())
            terminal->resize(static_cast<int>(std::clamp<std::int64_t>(size->as_array()[0].as_int64(), 2, 1000)),
                             static_cast<int>(std::clamp<std::int64_t>(size->as_array()[1].as_int64(), 2, 1000)));
    }
    terminal->stop("closed by the browser");
}

// The terminal ends with its web session (logout, idle logout, user removed) even when no
// keystroke comes to notice it; checking does not count as activity.
template <class Stream>
asio::awaitable<void> watch_session(std::shared_ptr<gateway_state> state, std::weak_ptr<ssh_terminal> weak,
                                    std::string session_token)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
        timer.expires_after(std::chrono::seconds(1));
        co_await timer.async_wait(use_nothrow);
        auto terminal = weak.lock();
        if (!terminal || terminal->stopped())
            co_return;
        if (!state->session_alive(session_token)) {
            terminal->stop("the web session ended (logged out or idle)");
            co_return;
        }
    }
}

// The browser sends its credentials at once; a connection that stays silent is closed.
template <class Stream>
asio::awaitable<void> close_if_silent(std::shared_ptr<asio::steady_timer> deadline,
                                      std::shared_ptr<websocket::stream<Stream>> ws)
{
    auto waited = co_await deadline->async_wait(use_nothrow);
    if (!std::get<0>(waited)) {
        error_code ignored;
        beast::get_lowest_layer(*ws).socket().close(ignored);
    }
}

template <class Stream>
asio::awaitable<void> serve_terminal(std::shared_ptr<gateway_state> state, Stream stream,
                                     http::request<http::string_body> upgrade, terminal_admission admission,
                                     std::string session_token)
{
    beast::get_lowest_layer(stream).expires_never();
    auto ws = std::make_shared<websocket::stream<Stream>>(std::move(stream));
    ws->set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws->read_message_max(64 * 1024);
    auto accepted = co_await ws->async_accept(upgrade, use_nothrow);
    if (std::get<0>(accepted))
        co_return;
    ws_browser<Stream> browser(ws);
    beast::flat_buffer first;
    auto deadline = std::make_shared<asio::steady_timer>(ws->get_executor(), std::chrono::seconds(30));
    asio::co_spawn(ws->get_executor(), close_if_silent<Stream>(deadline, ws), asio::detached);
    auto r = co_await ws->async_read(first, use_nothrow);
    deadline->cancel();
    if (std::get<0>(r))
        co_return;
    std::string error;
    std::string text = beast::buffers_to_string(first.data());
    auto treq = parse_terminal_start(text, error);
    OPENSSL_cleanse(text.data(), text.size());
    auto raw = first.data();
    OPENSSL_cleanse(raw.data(), raw.size());
    if (!treq) {
        std::string closed = json::serialize(json::object{{"phase", "closed"}, {"ok", false}, {"message", error}});
        co_await browser.status(std::move(closed));
        co_await ws->async_close(websocket::close_code::policy_error, use_nothrow);
        co_return;
    }
    treq->web_user = admission.user;
    treq->device_id = admission.device;
    auto terminal = std::make_shared<ssh_terminal>(ws->get_executor());
    asio::co_spawn(ws->get_executor(), read_browser(state, ws, terminal, session_token), asio::detached);
    asio::co_spawn(ws->get_executor(), watch_session<Stream>(state, terminal, session_token), asio::detached);
    co_await run_terminal(state, terminal, std::move(*treq), browser);
    co_await ws->async_close(websocket::close_code::normal, use_nothrow);
}

} // namespace

template <class Stream>
asio::awaitable<void> serve_http(std::shared_ptr<gateway_state> state, Stream stream, std::string peer)
{
    beast::flat_buffer buffer;
    for (;;) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(16 * 1024);
        parser.body_limit(64 * 1024);
        beast::get_lowest_layer(stream).expires_after(request_idle_timeout);
        auto got = co_await http::async_read(stream, buffer, parser, use_nothrow);
        if (std::get<0>(got))
            co_return;
        auto msg = parser.release();
        request req = to_request(msg, peer);
        if (websocket::is_upgrade(msg)) {
            if (req.path == "/api/terminal") {
                auto admission = admit_terminal(*state, req);
                if (!admission.refused) {
                    co_await serve_terminal(state, std::move(stream), std::move(msg), std::move(admission),
                                            req.cookie_session);
                    co_return;
                }
                auto res = to_response(*admission.refused, msg.version(), false);
                co_await http::async_write(stream, res, use_nothrow);
                co_return;
            }
            reply none{404, "application/json", json_error("no WebSocket here"), {}};
            auto res = to_response(none, msg.version(), false);
            co_await http::async_write(stream, res, use_nothrow);
            co_return;
        }
        reply rep = co_await handle_request(state, std::move(req));
        auto res = to_response(rep, msg.version(), msg.keep_alive());
        auto written = co_await http::async_write(stream, res, use_nothrow);
        if (std::get<0>(written) || !msg.keep_alive())
            break;
    }
    error_code ec;
    beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_send, ec);
}

template asio::awaitable<void> serve_http(std::shared_ptr<gateway_state>, beast::tcp_stream, std::string);
template asio::awaitable<void> serve_http(std::shared_ptr<gateway_state>, beast::ssl_stream<beast::tcp_stream>,
                                          std::string);

} // namespace sg::web
