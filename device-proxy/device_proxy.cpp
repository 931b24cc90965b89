#include "device-proxy/device_proxy.hpp"

#include <atomic>
#include <random>
#include <thread>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include "common/client.hpp"
#include "common/device_id.hpp"
#include "common/log.hpp"
#include "common/pump.hpp"
#include "common/runtime.hpp"
#include "common/tls.hpp"

namespace sg::device_proxy {

std::pair<std::string, target> parse_service_mapping(const std::string& text)
{
    auto eq = text.find('=');
    auto colon = text.rfind(':');
    if (eq == std::string::npos || colon == std::string::npos || colon < eq)
        throw config_error("--service expects NAME=HOST:PORT, got \"" + text + "\"");
    std::string name = text.substr(0, eq);
    if (!is_valid_stream_name(name))
        throw config_error("--service: invalid stream name \"" + name + "\"");
    std::string host = text.substr(eq + 1, colon - eq - 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    int port = 0;
    try {
        port = std::stoi(text.substr(colon + 1));
    } catch (const std::exception&) {
    }
    if (host.empty() || port <= 0 || port > 65535)
        throw config_error("--service: invalid target in \"" + text + "\"");
    return {name, target{host, static_cast<std::uint16_t>(port)}};
}

namespace {

struct proxy_state {
    options opts;
    std::shared_ptr<spdlog::logger> log;
    std::shared_ptr<asio::ssl::context> tls;
    asio::io_context* ioc = nullptr;
    pump_counters traffic;
    std::atomic<bool> stopping{false};
    std::atomic<std::size_t> active_streams{0};
    std::shared_ptr<client::device_connection> connection;
    std::mutex connection_mutex;
    int exit_code = 0;
};

std::string describe(const target& t) { return t.host + ":" + std::to_string(t.port); }

asio::awaitable<void> serve_stream(std::shared_ptr<proxy_state> state, std::shared_ptr<client::device_connection> conn,
                                   client::incoming_stream_request req)
{
    auto& log = *state->log;
    if (state->stopping) {
        conn->reject(req, "device proxy is shutting down");
        co_return;
    }
    target t = state->opts.default_target;
    if (!state->opts.services.empty()) {
        auto it = state->opts.services.find(req.stream_name);
        if (it == state->opts.services.end()) {
            std::string known;
            for (auto& [name, _] : state->opts.services)
                known += (known.empty() ? "" : ", ") + name;
            std::string reason = "unknown stream name '" + req.stream_name + "' (this device serves: " + known + ")";
            log.info("stream={} streamId={} rejected: {}", req.stream_name, req.stream_id, reason);
            conn->reject(req, reason);
            co_return;
        }
        t = it->second;
    }

    // Connect to the target first, so a target that is down is a clean rejection.
    auto ex = co_await asio::this_coro::executor;
    auto socket = std::make_shared<tcp::socket>(ex);
    tcp::resolver resolver(ex);
    auto resolved = co_await resolver.async_resolve(t.host, std::to_string(t.port), use_nothrow);
    auto& rec = std::get<0>(resolved);
    auto& endpoints = std::get<1>(resolved);
    error_code cec = rec;
    if (!rec) {
        asio::steady_timer deadline(ex, state->opts.connect_timeout);
        deadline.async_wait([socket](const error_code& e) {
            if (!e)
                socket->cancel();
        });
        auto [ec, ep] = co_await asio::async_connect(*socket, endpoints, use_nothrow);
        deadline.cancel();
        cec = ec;
    }
    if (cec) {
        std::string reason = "cannot connect to target " + describe(t) + ": " + cec.message();
        log.warn("stream={} streamId={} rejected: {}", req.stream_name, req.stream_id, reason);
        conn->reject(req, reason);
        co_return;
    }
    socket->set_option(tcp::no_delay(true));
    conn->accept(req);

    auto joined = co_await client::connect_stream(*state->tls, req.url, req.authorization_token);
    auto& f = std::get<0>(joined);
    auto& ws = std::get<1>(joined);
    if (f) {
        log.warn("stream={} streamId={} could not join the streaming endpoint: {}", req.stream_name, req.stream_id,
                 f.describe());
        co_return;
    }
    log.info("stream={} streamId={} established to {}", req.stream_name, req.stream_id, describe(t));
    auto started = std::chrono::steady_clock::now();
    state->active_streams++;
    auto result = co_await pump(tcp_end(socket), ws_end(ws), max_stream_message, &state->traffic);
    state->active_streams--;
    log.info("stream={} streamId={} closed: sent={} received={} durationS={:.3f} result={}", req.stream_name, req.stream_id,
             result.bytes_a_to_b, result.bytes_b_to_a,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
             result.error ? result.error.message() : "ok");
}

asio::awaitable<void> control_loop(std::shared_ptr<proxy_state> state)
{
    auto& log = *state->log;
    const auto& device = state->opts.device;
    std::mt19937 random(std::random_device{}());
    asio::steady_timer sleep(co_await asio::this_coro::executor);
    auto backoff = std::chrono::seconds(1);
    if (auto proxy = client::current_proxy_settings().for_host(device.host()))
        log.info("reaching relay {} through HTTP proxy {}", device.host_name, proxy->display());
    while (!state->stopping) {
        auto connection = co_await client::device_connection::connect(*state->tls, device);
        auto& f = std::get<0>(connection);
        auto& conn = std::get<1>(connection);
        std::string why;
        if (f) {
            why = f.describe();
            if (f.code == codes::unauthorized && state->opts.exit_on_auth_failure) {
                log.error("relay refused device {}: {}; exiting (--exit-on-auth-failure)", device.device_id, why);
                state->exit_code = 3;
                state->ioc->stop();
                co_return;
            }
        } else {
            log.info("connected to relay {} as device {}", device.host_name, device.device_id);
            {
                std::lock_guard lock(state->connection_mutex);
                state->connection = conn;
            }
            auto connected_at = std::chrono::steady_clock::now();
            std::function<void(client::incoming_stream_request)> on_request = [state, conn](client::incoming_stream_request req) {
                state->log->info("stream request: stream={} streamId={}", req.stream_name, req.stream_id);
                asio::co_spawn(asio::make_strand(*state->ioc), serve_stream(state, conn, std::move(req)), asio::detached);
            };
            auto lost = co_await conn->run(on_request);
            {
                std::lock_guard lock(state->connection_mutex);
                state->connection.reset();
            }
            if (state->stopping)
                break;
            why = lost.describe();
            log.warn("lost connection to relay {}: {}", device.host_name, why);
            // A healthy spell means the relay is fine again: the next outage starts fresh.
            if (std::chrono::steady_clock::now() - connected_at >= state->opts.backoff_reset) {
                backoff = std::chrono::seconds(1);
                log.info("connection lasted {}s or more: reconnect delay reset to 1s", state->opts.backoff_reset.count());
            }
        }
        // Exponential backoff with jitter so a fleet does not reconnect in lockstep.
        auto jittered = std::chrono::milliseconds(
            std::uniform_int_distribution<long>(backoff.count() * 500, backoff.count() * 1000)(random));
        log.info("reconnecting in {:.1f}s (last error: {})", jittered.count() / 1000.0, why);
        sleep.expires_after(jittered);
        co_await sleep.async_wait(use_nothrow);
        backoff = std::min(backoff * 2, std::max(std::chrono::seconds(1), state->opts.max_backoff));
    }
}

std::string utc_timestamp()
{
    char buf[64];
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    std::strftime(buf, sizeof buf, "%F %T UTC%z", &tm);
    return buf;
}

asio::awaitable<void> report_traffic(std::shared_ptr<proxy_state> state)
{
    auto interval = state->opts.stats_interval;
    asio::steady_timer timer(co_await asio::this_coro::executor);
    std::uint64_t last_sent = 0, last_received = 0;
    state->log->info("Reporting traffic statistics every {} seconds.", interval.count());
    while (!state->stopping) {
        timer.expires_after(interval);
        co_await timer.async_wait(use_nothrow);
        // Counted as written, not as requested.
        std::uint64_t sent = state->traffic.a_to_b, received = state->traffic.b_to_a;
        if (sent != last_sent || received != last_received)
            state->log->info("[{}] Network traffic (in bytes) (sent={}; received={})", utc_timestamp(), sent, received);
        last_sent = sent;
        last_received = received;
    }
}

} // namespace

int run(const options& o)
{
    // Declared first so it is destroyed last: every socket the state still holds must go while
    // the io_context's services exist (destroying them later corrupted the heap at exit).
    unsigned threads = thread_count(o.threads);
    asio::io_context ioc(static_cast<int>(threads));
    auto state = std::make_shared<proxy_state>();
    state->opts = o;
    state->log = make_logger("device-proxy", o.verbose);
    state->tls = std::make_shared<asio::ssl::context>(make_client_tls_context(o.ca_file));
    if (o.cert && o.key)
        use_client_certificate(*state->tls, *o.cert, *o.key);
    state->ioc = &ioc;

    asio::co_spawn(asio::make_strand(ioc), control_loop(state), asio::detached);
    if (o.stats_interval.count() > 0)
        asio::co_spawn(asio::make_strand(ioc), report_traffic(state), asio::detached);

    graceful_stop stop;
    stop.drain_timeout = o.drain_timeout;
    stop.active = [state] { return static_cast<std::size_t>(state->active_streams.load()); };
    stop.begin = [state](int signal) {
        state->log->info("signal {}: closing the control connection; {} live stream(s) may finish", signal,
                         state->active_streams.load());
        state->stopping = true;
        std::lock_guard lock(state->connection_mutex);
        if (state->connection)
            state->connection->close();
    };
    run_until_stopped(ioc, threads, std::move(stop), *state->log);
    return state->exit_code;
}

} // namespace sg::device_proxy
