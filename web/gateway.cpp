#include "web/gateway.hpp"

#include <sys/stat.h>
#include <csignal>
#include <fstream>
#include <sstream>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/strand.hpp>
#include "common/runtime.hpp"
#include "common/tls.hpp"
#include "web/http_listener.hpp"
#include "web/internal.hpp"

namespace sg::web {

namespace {

struct listener_state {
    std::shared_ptr<gateway_state> state;
    std::shared_ptr<asio::ssl::context> server_tls; // null for plain HTTP
    asio::io_context* ioc = nullptr;
    std::atomic<std::size_t> connections{0};
};

asio::awaitable<void> serve_tls(std::shared_ptr<listener_state> ls, tcp::socket socket, std::string peer)
{
    beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *ls->server_tls);
    beast::get_lowest_layer(stream).expires_after(std::chrono::seconds(10));
    auto hs = co_await stream.async_handshake(asio::ssl::stream_base::server, use_nothrow);
    if (std::get<0>(hs))
        co_return;
    co_await serve_http(ls->state, std::move(stream), peer);
}

asio::awaitable<void> serve_connection(std::shared_ptr<listener_state> ls, tcp::socket socket)
{
    error_code ec;
    auto ep = socket.remote_endpoint(ec);
    std::string peer = ec ? "?" : ep.address().to_string();
    socket.set_option(tcp::no_delay(true), ec);
    ls->connections++;
    if (ls->server_tls)
        co_await serve_tls(ls, std::move(socket), peer);
    else
        co_await serve_http(ls->state, beast::tcp_stream(std::move(socket)), peer);
    ls->connections--;
}

asio::awaitable<void> accept_loop(std::shared_ptr<listener_state> ls, std::shared_ptr<tcp::acceptor> acceptor)
{
    for (;;) {
        auto accepted = co_await acceptor->async_accept(asio::make_strand(*ls->ioc), use_nothrow);
        auto& ec = std::get<0>(accepted);
        if (ec == asio::error::operation_aborted)
            co_return;
        if (ec) {
            ls->state->log->warn("accept failed: {}", ec.message());
            continue;
        }
        if (ls->connections >= 1000) { // bound: a flood of browsers cannot exhaust descriptors
            error_code ignored;
            std::get<1>(accepted).close(ignored);
            continue;
        }
        auto socket = std::move(std::get<1>(accepted));
        auto ex = socket.get_executor();
        asio::co_spawn(ex, serve_connection(ls, std::move(socket)), asio::detached);
    }
}

std::string read_text(const std::filesystem::path& p)
{
    std::ifstream in(p, std::ios::binary);
    if (!in)
        throw config_error("cannot read " + p.string());
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

tcp::endpoint parse_listen(const std::string& text)
{
    auto colon = text.rfind(':');
    if (colon == std::string::npos)
        throw config_error("--listen: \"" + text + "\" is not ADDR:PORT");
    std::string host = text.substr(0, colon);
    if (host.size() > 1 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    if (host == "localhost")
        host = "127.0.0.1";
    error_code ec;
    auto address = asio::ip::make_address(host, ec);
    int port = -1;
    try {
        port = std::stoi(text.substr(colon + 1));
    } catch (const std::exception&) {
    }
    if (ec || port < 0 || port > 65535)
        throw config_error("--listen: \"" + text + "\" is not ADDR:PORT");
    return tcp::endpoint(address, static_cast<std::uint16_t>(port));
}

void make_private_dir(const std::filesystem::path& dir)
{
    std::filesystem::create_directories(dir);
    ::chmod(dir.c_str(), 0700);
}

} // namespace

int run(const options& o)
{
    asio::io_context ioc(1);
    auto endpoint = parse_listen(o.listen);
    if (o.tls_cert.has_value() != o.tls_key.has_value())
        throw config_error("--tls-cert and --tls-key go together");
    if (!o.tls_cert && !endpoint.address().is_loopback() && !o.allow_plain_http)
        throw config_error("refusing plain HTTP on " + o.listen + ": give --tls-cert/--tls-key, listen on loopback "
                           "(behind a TLS reverse proxy), or force it with --allow-plain-http");
    make_private_dir(o.recordings_dir);
    make_private_dir(o.data_dir);
    ::signal(SIGPIPE, SIG_IGN);
    init_libssh2();

    auto ls = std::make_shared<listener_state>();
    ls->ioc = &ioc;
    ls->state = std::make_shared<gateway_state>(o);
    auto& state = *ls->state;
    state.xterm_bundle = build_xterm_bundle(o.xterm_lib, o.xterm_fit);
    state.xterm_css = read_text(o.xterm_css);
    if (!user_store::load(o.users_file).size())
        state.log->warn("{} has no users yet: add one with `streamgate-web add-user --users {} --name NAME --devices 'GLOB'`",
                        o.users_file.string(), o.users_file.string());
    if (o.tls_cert)
        ls->server_tls = std::make_shared<asio::ssl::context>(make_server_tls_context(*o.tls_cert, *o.tls_key));

    auto acceptor = std::make_shared<tcp::acceptor>(asio::make_strand(ioc));
    acceptor->open(endpoint.protocol());
    acceptor->set_option(tcp::acceptor::reuse_address(true));
    error_code ec;
    acceptor->bind(endpoint, ec);
    if (ec)
        throw std::runtime_error("cannot listen on " + o.listen + ": " + ec.message());
    acceptor->listen();
    auto bound = acceptor->local_endpoint();
    state.log->info("event=WebListening address={}:{} scheme={} relay={} stream_name={}", bound.address().to_string(),
                    bound.port(), o.tls_cert ? "https" : "http", o.service.host_name, o.stream_name);
    asio::co_spawn(acceptor->get_executor(), accept_loop(ls, acceptor), asio::detached);

    graceful_stop stop;
    stop.drain_timeout = std::chrono::seconds(5);
    stop.active = [ls] { return ls->state->active_terminals.load(); };
    stop.begin = [ls, acceptor](int signal) {
        ls->state->stopping = true;
        ls->state->log->info("signal {}: no new connections; {} terminal(s) open", signal,
                             ls->state->active_terminals.load());
        asio::post(acceptor->get_executor(), [acceptor] {
            error_code ignored;
            acceptor->close(ignored);
        });
    };
    run_until_stopped(ioc, 1, stop, *state.log);
    return 0;
}

} // namespace sg::web
