#include "common/http_server.hpp"

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/logger.h>
#include "common/websocket.hpp"

namespace sg {

namespace http = beast::http;

namespace {

constexpr std::size_t max_connections = 64;
constexpr auto request_deadline = std::chrono::seconds(10);

tcp::endpoint parse_endpoint(const std::string& text)
{
    auto colon = text.rfind(':');
    if (colon == std::string::npos)
        throw std::runtime_error("\"" + text + "\" is not ADDR:PORT");
    std::string host = text.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    if (host == "localhost")
        host = "127.0.0.1";
    int port = -1;
    try {
        std::size_t used = 0;
        port = std::stoi(text.substr(colon + 1), &used);
        if (used != text.size() - colon - 1)
            port = -1;
    } catch (const std::exception&) {
    }
    error_code ec;
    auto address = asio::ip::make_address(host, ec);
    if (ec || port < 0 || port > 65535)
        throw std::runtime_error("\"" + text + "\" is not ADDR:PORT with an IP address and a port");
    return {address, static_cast<std::uint16_t>(port)};
}

std::string endpoint_text(const tcp::endpoint& ep)
{
    auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(ep.port());
}

// The host part of a Host header names this machine's loopback.
bool loopback_host(std::string_view host)
{
    std::string h(host);
    if (!h.empty() && h.front() == '[') {
        h = h.substr(1, h.find(']') - 1);
    } else if (auto colon = h.find(':'); colon != std::string::npos && h.find(':', colon + 1) == std::string::npos) {
        h = h.substr(0, colon);
    }
    if (h == "localhost")
        return true;
    error_code ec;
    auto a = asio::ip::make_address(h, ec);
    return !ec && a.is_loopback();
}

class server_impl : public http_server, public std::enable_shared_from_this<server_impl> {
public:
    server_impl(asio::io_context& ioc, http_handler handler, std::shared_ptr<spdlog::logger> log)
        : acceptor_(asio::make_strand(ioc)), ioc_(ioc), handler_(std::move(handler)), log_(std::move(log))
    {
    }

    void bind(const tcp::endpoint& ep)
    {
        acceptor_.open(ep.protocol());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        error_code ec;
        acceptor_.bind(ep, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + endpoint_text(ep) + ": " + ec.message());
        acceptor_.listen(asio::socket_base::max_listen_connections);
        loopback_only_ = ep.address().is_loopback();
        address_ = endpoint_text(acceptor_.local_endpoint());
        asio::co_spawn(acceptor_.get_executor(), accept_loop(shared_from_this()), asio::detached);
    }

    std::string address() const override { return address_; }

    void close() override
    {
        asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
            error_code ignored;
            self->acceptor_.close(ignored);
        });
    }

private:
    static asio::awaitable<void> accept_loop(std::shared_ptr<server_impl> self)
    {
        for (;;) {
            auto accepted = co_await self->acceptor_.async_accept(asio::make_strand(self->ioc_), use_nothrow);
            auto& ec = std::get<0>(accepted);
            if (ec == asio::error::operation_aborted || !self->acceptor_.is_open())
                co_return;
            if (ec)
                continue;
            auto& socket = std::get<1>(accepted);
            if (self->connections_.load() >= max_connections) {
                error_code ignored;
                socket.close(ignored);
                continue;
            }
            self->connections_++;
            auto ex = socket.get_executor();
            asio::co_spawn(ex, serve(self, std::move(socket)), asio::detached);
        }
    }

    http_reply answer(const http::request<http::empty_body>& req) const
    {
        if (req.method() != http::verb::get && req.method() != http::verb::head)
            return {405, "text/plain; charset=utf-8", "use GET\n", {{"Allow", "GET, HEAD"}}};
        if (loopback_only_ && !loopback_host(req[http::field::host]))
            return {403, "text/plain; charset=utf-8", "this listener answers loopback host names only\n", {}};
        try {
            return handler_(std::string(req.target()));
        } catch (const std::exception& e) {
            log_->warn("event=AdminRequestFailed target=\"{}\" error=\"{}\"", std::string(req.target().substr(0, 200)),
                       e.what());
            return {500, "text/plain; charset=utf-8", "internal error\n", {}};
        }
    }

    static asio::awaitable<void> serve(std::shared_ptr<server_impl> self, tcp::socket socket)
    {
        beast::tcp_stream stream(std::move(socket));
        beast::flat_buffer buffer;
        for (;;) {
            http::request_parser<http::empty_body> parser;
            parser.header_limit(8 * 1024);
            stream.expires_after(request_deadline);
            auto read = co_await http::async_read(stream, buffer, parser, use_nothrow);
            if (std::get<0>(read))
                break;
            const auto& req = parser.get();
            http_reply reply = self->answer(req);
            http::response<http::string_body> res{static_cast<http::status>(reply.status), req.version()};
            res.set(http::field::content_type, reply.content_type);
            res.set(http::field::cache_control, "no-store");
            res.set("X-Content-Type-Options", "nosniff");
            for (const auto& [name, value] : reply.headers)
                res.set(name, value);
            res.keep_alive(req.keep_alive());
            res.body() = std::move(reply.body);
            res.prepare_payload();
            http::response_serializer<http::string_body> serializer(res);
            error_code wec;
            if (req.method() == http::verb::head) {
                auto written = co_await http::async_write_header(stream, serializer, use_nothrow);
                wec = std::get<0>(written);
            } else {
                auto written = co_await http::async_write(stream, serializer, use_nothrow);
                wec = std::get<0>(written);
            }
            if (wec || !res.keep_alive())
                break;
        }
        error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        self->connections_--;
    }

    tcp::acceptor acceptor_;
    asio::io_context& ioc_;
    http_handler handler_;
    std::shared_ptr<spdlog::logger> log_;
    std::string address_;
    bool loopback_only_ = false;
    std::atomic<std::size_t> connections_{0};
};

} // namespace

std::shared_ptr<http_server> start_http_server(asio::io_context& ioc, const std::string& listen, http_handler handler,
                                               std::shared_ptr<spdlog::logger> log)
{
    auto endpoint = parse_endpoint(listen);
    auto server = std::make_shared<server_impl>(ioc, std::move(handler), std::move(log));
    server->bind(endpoint);
    return server;
}

} // namespace sg
