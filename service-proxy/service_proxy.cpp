#include "service-proxy/service_proxy.hpp"

#include <atomic>
#include <thread>
#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include "common/client.hpp"
#include "common/log.hpp"
#include "common/pump.hpp"
#include "common/runtime.hpp"
#include "common/tls.hpp"

namespace sg::service_proxy {

namespace {

struct proxy_state {
    options opts;
    std::shared_ptr<spdlog::logger> log;
    std::shared_ptr<asio::ssl::context> tls;
    asio::io_context* ioc = nullptr;
    unsigned threads = 1;
    int exit_code = 0;
    std::atomic<std::size_t> active_streams{0};
};

// stdin/stdout as one end of a pump: FIN from the far side closes stdout.
class stdio_end {
public:
    explicit stdio_end(asio::any_io_executor ex)
        : in_(std::make_shared<asio::posix::stream_descriptor>(ex, ::dup(STDIN_FILENO))),
          out_(std::make_shared<asio::posix::stream_descriptor>(ex, ::dup(STDOUT_FILENO)))
    {
    }
    asio::any_io_executor executor() const { return in_->get_executor(); }
    asio::awaitable<std::tuple<error_code, std::size_t>> read(asio::mutable_buffer buffer)
    {
        auto result = co_await in_->async_read_some(buffer, use_nothrow);
        co_return result;
    }
    asio::awaitable<error_code> write(asio::const_buffer data)
    {
        auto [ec, n] = co_await asio::async_write(*out_, data, use_nothrow);
        co_return ec;
    }
    asio::awaitable<error_code> write_eof()
    {
        error_code ec;
        out_->close(ec);
        ::close(STDOUT_FILENO); // the reader of our stdout sees EOF only when every copy is closed
        co_return ec;
    }
    asio::awaitable<void> close()
    {
        error_code ec;
        in_->close(ec);
        out_->close(ec);
        co_return;
    }
    void abort(bool)
    {
        asio::post(in_->get_executor(), [in = in_, out = out_] {
            error_code ec;
            in->close(ec);
            out->close(ec);
        });
    }

private:
    std::shared_ptr<asio::posix::stream_descriptor> in_, out_;
};

// Asks the relay for a stream to the device and joins it.
asio::awaitable<std::pair<failure, std::shared_ptr<wss_stream>>> open_stream(std::shared_ptr<proxy_state> state)
{
    client::stream_request request{state->opts.device_id, state->opts.stream_name, state->opts.connect_timeout,
                                   state->opts.response_timeout};
    auto opened = co_await client::open_stream(*state->tls, state->opts.service, request);
    if (opened.error)
        co_return std::pair{opened.error, nullptr};
    state->log->info("Stream response received: Name={} IsAccepted={}", opened.response.stream_name,
                     opened.response.accepted ? "True" : "False");
    if (!opened.response.accepted)
        co_return std::pair{failure{0, "device " + state->opts.device_id + " rejected the stream: " + opened.response.reason},
                            nullptr};
    co_return std::pair{failure{}, opened.ws};
}

asio::awaitable<void> serve_local(std::shared_ptr<proxy_state> state, std::shared_ptr<tcp::socket> local)
{
    error_code ec;
    auto peer = local->remote_endpoint(ec);
    local->set_option(tcp::no_delay(true), ec);
    auto opened = co_await open_stream(state);
    auto& f = std::get<0>(opened);
    auto& ws = std::get<1>(opened);
    if (f) {
        state->log->error("cannot open a stream to {} for {}: {}", state->opts.device_id,
                          peer.address().to_string() + ":" + std::to_string(peer.port()), f.describe());
        local->close(ec);
        co_return;
    }
    state->log->info("Starting streaming for {}:{}", peer.address().to_string(), peer.port());
    state->active_streams++;
    auto result = co_await pump(tcp_end(local), ws_end(ws, client::connection_kept(*ws)));
    client::stream_finished(ws, !result.error);
    state->active_streams--;
    state->log->info("Done streaming for {}:{}: sent={} received={} result={}", peer.address().to_string(), peer.port(),
                     result.bytes_a_to_b, result.bytes_b_to_a, result.error ? result.error.message() : "ok");
}

asio::awaitable<void> accept_loop(std::shared_ptr<proxy_state> state, std::shared_ptr<tcp::acceptor> acceptor)
{
    for (;;) {
        auto accepted = co_await acceptor->async_accept(connection_executor(*state->ioc, state->threads), use_nothrow);
        auto& ec = std::get<0>(accepted);
        auto& socket = std::get<1>(accepted);
        if (ec == asio::error::operation_aborted)
            co_return;
        if (ec) {
            state->log->warn("accept failed: {}", ec.message());
            continue;
        }
        auto local = std::make_shared<tcp::socket>(std::move(socket));
        asio::co_spawn(local->get_executor(), serve_local(state, local), asio::detached);
    }
}

asio::awaitable<void> serve_stdio(std::shared_ptr<proxy_state> state)
{
    auto opened = co_await open_stream(state);
    auto& f = std::get<0>(opened);
    auto& ws = std::get<1>(opened);
    if (f) {
        state->log->error("cannot open a stream to {}: {}", state->opts.device_id, f.describe());
        state->exit_code = 1;
        state->ioc->stop();
        co_return;
    }
    state->active_streams++;
    auto result = co_await pump(stdio_end(ws->get_executor()), ws_end(ws));
    client::stream_finished(ws, false); // the only stream: closed at its end
    state->active_streams--;
    if (result.error && !is_benign(result.error)) {
        state->log->error("stream to {} ended: {}", state->opts.device_id, result.error.message());
        state->exit_code = 1;
    }
    state->ioc->stop();
}

} // namespace

int run(const options& o)
{
    // Declared first so it is destroyed last: every socket the state still holds must go while
    // the io_context's services exist (destroying them later corrupted the heap at exit).
    unsigned threads = o.stdio ? 1 : thread_count(o.threads);
    asio::io_context ioc(static_cast<int>(threads));
    auto state = std::make_shared<proxy_state>();
    state->opts = o;
    state->log = make_logger("service-proxy", o.verbose);
    state->tls = std::make_shared<asio::ssl::context>(make_client_tls_context(o.ca_file));
    state->ioc = &ioc;
    state->threads = threads;

    if (auto proxy = client::current_proxy_settings().for_host(o.service.host()))
        state->log->info("reaching relay {} through HTTP proxy {}", o.service.host_name, proxy->display());

    std::shared_ptr<tcp::acceptor> acceptor;
    if (o.stdio) {
        asio::co_spawn(asio::make_strand(ioc), serve_stdio(state), asio::detached);
    } else {
        error_code ec;
        auto address = asio::ip::make_address(o.bind, ec);
        if (ec)
            throw config_error("--bind: \"" + o.bind + "\" is not an IP address");
        tcp::endpoint endpoint(address, o.local_port);
        acceptor = std::make_shared<tcp::acceptor>(asio::make_strand(ioc));
        acceptor->open(endpoint.protocol());
        acceptor->set_option(tcp::acceptor::reuse_address(true));
        acceptor->bind(endpoint, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + o.bind + ":" + std::to_string(o.local_port) + ": " + ec.message());
        acceptor->listen();
        state->log->info("listening on {}:{} for streams to device {} (stream name {})", o.bind,
                         acceptor->local_endpoint().port(), o.device_id, o.stream_name);
        asio::co_spawn(acceptor->get_executor(), accept_loop(state, acceptor), asio::detached);
    }

    graceful_stop stop;
    stop.drain_timeout = o.drain_timeout;
    stop.active = [state] { return static_cast<std::size_t>(state->active_streams.load()); };
    stop.begin = [state, acceptor](int signal) {
        state->log->info("signal {}: no new connections; {} live stream(s) may finish", signal,
                         state->active_streams.load());
        if (acceptor)
            asio::post(acceptor->get_executor(), [acceptor] {
                error_code ignored;
                acceptor->close(ignored);
            });
    };
    run_until_stopped(ioc, threads, std::move(stop), *state->log);
    return state->exit_code;
}

} // namespace sg::service_proxy
