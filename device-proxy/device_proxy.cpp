#include "device-proxy/device_proxy.hpp"

#include <array>
#include <atomic>
#include <random>
#include <thread>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include "common/client.hpp"
#include "common/device_id.hpp"
#include "common/http_server.hpp"
#include "common/prometheus.hpp"
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

target parse_relay_address(const std::string& text)
{
    auto colon = text.rfind(':');
    std::string host = colon == std::string::npos ? "" : text.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    int port = 0;
    try {
        if (colon != std::string::npos)
            port = std::stoi(text.substr(colon + 1));
    } catch (const std::exception&) {
    }
    if (host.empty() || port <= 0 || port > 65535)
        throw config_error("--relay expects HOST:PORT, got \"" + text + "\"");
    return {host, static_cast<std::uint16_t>(port)};
}

namespace {

// Counters for --metrics-listen; relaxed atomics, none on the per-byte path (bytes are `traffic`).
struct proxy_metrics {
    enum rejection { unknown_stream_name, target_unreachable, shutting_down, rejection_count };
    std::chrono::system_clock::time_point started_at = std::chrono::system_clock::now();
    std::atomic<bool> control_connected{false};
    std::atomic<std::uint64_t> control_connections{0}, reconnect_attempts{0}, control_failures{0};
    std::atomic<std::uint64_t> stream_requests{0}, streams_accepted{0}, join_failures{0}, target_connect_failures{0};
    std::array<std::atomic<std::uint64_t>, rejection_count> rejected{};
    void reject(rejection why) { rejected[why].fetch_add(1, std::memory_order_relaxed); }
};

struct proxy_state {
    options opts;
    std::shared_ptr<spdlog::logger> log;
    std::shared_ptr<asio::ssl::context> tls;
    asio::io_context* ioc = nullptr;
    unsigned threads = 1;
    pump_counters traffic; // a_to_b: target -> service, b_to_a: service -> target
    proxy_metrics metrics;
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
    state->metrics.stream_requests++;
    if (state->stopping) {
        state->metrics.reject(proxy_metrics::shutting_down);
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
            state->metrics.reject(proxy_metrics::unknown_stream_name);
            conn->reject(req, reason);
            co_return;
        }
        t = it->second;
    }

    // Connect to the target first, so a target that is down is a clean rejection.
    auto ex = co_await asio::this_coro::executor;
    auto socket = std::make_shared<tcp::socket>(ex);
    auto resolved = co_await client::resolve_within(t.host, t.port, state->opts.connect_timeout);
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
        state->metrics.target_connect_failures++;
        state->metrics.reject(proxy_metrics::target_unreachable);
        conn->reject(req, reason);
        co_return;
    }
    socket->set_option(tcp::no_delay(true));
    state->metrics.streams_accepted++;
    auto joined = co_await client::accept_stream(*state->tls, *conn, req);
    auto& f = std::get<0>(joined);
    auto& ws = std::get<1>(joined);
    if (f) {
        log.warn("stream={} streamId={} could not join the streaming endpoint: {}", req.stream_name, req.stream_id,
                 f.describe());
        state->metrics.join_failures++;
        co_return;
    }
    log.info("stream={} streamId={} established to {}", req.stream_name, req.stream_id, describe(t));
    auto started = std::chrono::steady_clock::now();
    state->active_streams++;
    auto result = co_await pump(tcp_end(socket), ws_end(ws, client::connection_kept(*ws)), stream_chunk, &state->traffic);
    client::stream_finished(ws, !result.error);
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
    // --relay names the nodes of a cluster: each attempt after a failure or a loss dials the next.
    std::vector<target> relays = state->opts.relays;
    if (relays.empty())
        relays.push_back({device.host(), device.port()});
    std::size_t turn = 0;
    for (bool first = true; !state->stopping; first = false, turn = (turn + 1) % relays.size()) {
        if (!first)
            state->metrics.reconnect_attempts++;
        const target& relay = relays[turn];
        if (state->opts.relays.size() > 0)
            log.info("connecting to relay {}", describe(relay));
        auto connection = co_await client::device_connection::connect(*state->tls, device, relay.host, relay.port);
        auto& f = std::get<0>(connection);
        auto& conn = std::get<1>(connection);
        std::string why;
        if (f) {
            why = f.describe();
            state->metrics.control_failures++;
            if (f.code == codes::unauthorized && state->opts.exit_on_auth_failure) {
                log.error("relay refused device {}: {}; exiting (--exit-on-auth-failure)", device.device_id, why);
                state->exit_code = 3;
                state->ioc->stop();
                co_return;
            }
        } else {
            log.info("connected to relay {} as device {}",
                     state->opts.relays.empty() ? device.host_name : describe(relay), device.device_id);
            {
                std::lock_guard lock(state->connection_mutex);
                state->connection = conn;
            }
            state->metrics.control_connections++;
            state->metrics.control_connected = true;
            auto connected_at = std::chrono::steady_clock::now();
            std::function<void(client::incoming_stream_request)> on_request = [state, conn](client::incoming_stream_request req) {
                state->log->info("stream request: stream={} streamId={}", req.stream_name, req.stream_id);
                asio::co_spawn(connection_executor(*state->ioc, state->threads), serve_stream(state, conn, std::move(req)),
                               asio::detached);
            };
            auto lost = co_await conn->run(on_request);
            state->metrics.control_connected = false;
            {
                std::lock_guard lock(state->connection_mutex);
                state->connection.reset();
            }
            if (state->stopping)
                break;
            why = lost.describe();
            log.warn("lost connection to relay {}: {}", state->opts.relays.empty() ? device.host_name : describe(relay), why);
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

std::string metrics_text(proxy_state& state)
{
    namespace prom = sg::prometheus;
    auto& m = state.metrics;
    auto load = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    std::string out;
    auto one = [&](const char* name, const char* type, const char* help, std::uint64_t value) {
        prom::family(out, name, type, help);
        prom::sample(out, name, {}, value);
    };
    prom::family(out, "streamgate_device_proxy_process_start_time_seconds", "gauge", "Start time since the Unix epoch.");
    prom::sample(out, "streamgate_device_proxy_process_start_time_seconds", {},
                 std::chrono::duration<double>(m.started_at.time_since_epoch()).count());
    one("streamgate_device_proxy_control_connected", "gauge", "1 while the control connection to the relay is up.",
        m.control_connected ? 1 : 0);
    one("streamgate_device_proxy_control_connections_total", "counter", "Control connections established.",
        load(m.control_connections));
    one("streamgate_device_proxy_reconnects_total", "counter", "Connection attempts after the first (after a loss or a failure).",
        load(m.reconnect_attempts));
    one("streamgate_device_proxy_control_connect_failures_total", "counter", "Control connection attempts that failed.",
        load(m.control_failures));
    one("streamgate_device_proxy_stream_requests_total", "counter", "Stream requests received from the relay.",
        load(m.stream_requests));
    one("streamgate_device_proxy_streams_accepted_total", "counter", "Stream requests accepted (target connected).",
        load(m.streams_accepted));
    prom::family(out, "streamgate_device_proxy_streams_rejected_total", "counter", "Stream requests rejected, by reason.");
    const char* reasons[] = {"unknown_stream_name", "target_unreachable", "shutting_down"};
    for (int i = 0; i < proxy_metrics::rejection_count; ++i)
        prom::sample(out, "streamgate_device_proxy_streams_rejected_total", {{"reason", reasons[i]}}, load(m.rejected[i]));
    one("streamgate_device_proxy_stream_join_failures_total", "counter", "Accepted streams that could not join the streaming endpoint.",
        load(m.join_failures));
    one("streamgate_device_proxy_target_connect_failures_total", "counter", "Connections to a local target that failed.",
        load(m.target_connect_failures));
    one("streamgate_device_proxy_streams_active", "gauge", "Streams carrying bytes now.", state.active_streams.load());
    prom::family(out, "streamgate_device_proxy_stream_bytes_total", "counter", "Stream payload bytes, by direction.");
    prom::sample(out, "streamgate_device_proxy_stream_bytes_total", {{"direction", "service_to_device"}}, load(state.traffic.b_to_a));
    prom::sample(out, "streamgate_device_proxy_stream_bytes_total", {{"direction", "device_to_service"}}, load(state.traffic.a_to_b));
    return out;
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
    state->threads = threads;

    asio::co_spawn(asio::make_strand(ioc), control_loop(state), asio::detached);
    if (o.stats_interval.count() > 0)
        asio::co_spawn(asio::make_strand(ioc), report_traffic(state), asio::detached);

    std::shared_ptr<http_server> metrics_listener;
    if (!listener_disabled(o.metrics_listen)) {
        http_handler handler = [state](const std::string& target) -> http_reply {
            std::string path = target.substr(0, target.find('?'));
            if (path == "/metrics")
                return {200, std::string(prometheus::content_type), metrics_text(*state), {}};
            if (path == "/healthz")
                return {200, "text/plain; charset=utf-8", "ok\n", {}};
            return {404, "text/plain; charset=utf-8", "not found\n", {}};
        };
        try {
            metrics_listener = start_http_server(ioc, o.metrics_listen, std::move(handler), state->log);
        } catch (const std::exception& e) {
            throw config_error(std::string("--metrics-listen: ") + e.what());
        }
        state->log->info("event=MetricsListening address={} paths=\"/metrics /healthz\"", metrics_listener->address());
    }

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
