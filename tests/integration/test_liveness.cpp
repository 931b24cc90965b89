// Liveness: keepalive pings find frozen peers, the device proxy reconnects with backoff, the
// service proxy keeps listening while the relay is away.
#include <catch2/catch.hpp>

#include <regex>
#include <thread>

#include "harness.hpp"

using namespace sgit;

namespace {

// Every process runs with --ping-interval 1: a silent peer is pinged after 1 s and declared dead
// after 2 s (2 intervals). "~3 intervals + slack" below = 3 s + 3 s for a loaded 2-core machine
// and the admin command that reads the registry.
const std::vector<std::string> k_ping_1s = {"--ping-interval", "1"};
constexpr millis k_dead_within = 6s;

long ms_since(steady::time_point t) {
    return static_cast<long>(std::chrono::duration_cast<millis>(steady::now() - t).count());
}

// Resumes a SIGSTOPped process when the test ends, whatever happens.
struct resume_on_exit {
    process& p;
    ~resume_on_exit() { p.kill(SIGCONT); }
};


}  // namespace

TEST_CASE("liveness: a frozen device proxy (SIGSTOP) is declared dead by the relay, its stream is "
          "closed, and after SIGCONT it reconnects",
          "[integration][liveness]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(),
                           .device_proxy_args = k_ping_1s,
                           .service_proxy_args = k_ping_1s,
                           .relay_args = k_ping_1s});
    unique_fd client = open_echo_stream(tunnel.local_port);
    REQUIRE(target.connections_open() == 1);

    tunnel.device_proxy->kill(SIGSTOP);
    resume_on_exit resume{*tunnel.device_proxy};
    const auto stopped_at = steady::now();

    // The relay gives up on the silent control connection and marks the device offline.
    std::string state;
    bool offline = wait_until(
        [&] { return (state = tunnel.relay.connection_state(tunnel.device_id)) == "Disconnected"; },
        k_dead_within + 10s, 100ms);
    const long offline_ms = ms_since(stopped_at);
    INFO(tunnel.relay.relay().describe());
    INFO("connectionState: " << state << " after " << offline_ms << " ms");
    CHECK(offline);
    CHECK(offline_ms <= k_dead_within.count());

    // The stream through the frozen device is closed on the service side: the client's TCP
    // connection sees EOF or a reset, it is not left hanging.
    closed_result closed = wait_closed(client.get(), k_dead_within + 10s);
    const long closed_ms = ms_since(stopped_at);
    INFO("client connection: " << closed.how << " " << closed_ms << " ms after SIGSTOP");
    CHECK(closed.closed);
    CHECK(closed_ms <= k_dead_within.count() + 2000);
    CHECK(closed.received == 0);
    CHECK(tunnel.service_proxy->running());

    // Awake again, the device proxy notices that its connections are gone and reconnects.
    tunnel.device_proxy->kill(SIGCONT);
    const auto resumed_at = steady::now();
    bool online = tunnel.relay.wait_device_connected(tunnel.device_id, *tunnel.device_proxy, 15s);
    INFO(tunnel.device_proxy->describe());
    INFO("Connected again after " << ms_since(resumed_at) << " ms");
    REQUIRE(online);
    CHECK(tunnel.device_proxy->running());
    CHECK(contains(tunnel.device_proxy->stderr_text(), "lost connection to relay"));
    // The dead stream's target connection is closed too, and a new stream works.
    CHECK(wait_until([&] { return target.connections_open() == 0; }, 10s));
    unique_fd again = open_echo_stream(tunnel.local_port);
    CHECK(target.connections_accepted() == 2);
}

TEST_CASE("liveness: a frozen relay (SIGSTOP) is declared dead by both proxies, which close their "
          "local connections, and the device reconnects after SIGCONT",
          "[integration][liveness]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(),
                           .device_proxy_args = k_ping_1s,
                           .service_proxy_args = k_ping_1s,
                           .relay_args = k_ping_1s});
    unique_fd client = open_echo_stream(tunnel.local_port);
    REQUIRE(target.connections_open() == 1);

    tunnel.relay.relay().kill(SIGSTOP);
    resume_on_exit resume{tunnel.relay.relay()};
    const auto stopped_at = steady::now();

    bool lost = wait_until(
        [&] { return contains(tunnel.device_proxy->stderr_text(), "lost connection to relay"); },
        k_dead_within + 10s, 50ms);
    const long lost_ms = ms_since(stopped_at);
    INFO(tunnel.device_proxy->describe());
    INFO("device proxy noticed after " << lost_ms << " ms");
    CHECK(lost);
    CHECK(lost_ms <= k_dead_within.count());

    // Service side: the client's connection is closed.
    closed_result closed = wait_closed(client.get(), k_dead_within + 10s);
    INFO("client connection: " << closed.how << " " << ms_since(stopped_at) << " ms after SIGSTOP");
    CHECK(closed.closed);
    CHECK(ms_since(stopped_at) <= k_dead_within.count() + 2000);
    // Device side: the target's connection is closed.
    bool target_closed = wait_until([&] { return target.connections_open() == 0; }, k_dead_within + 5s);
    INFO("target connection closed after " << ms_since(stopped_at) << " ms");
    CHECK(target_closed);
    CHECK(ms_since(stopped_at) <= k_dead_within.count() + 2000);
    CHECK(tunnel.device_proxy->running());
    CHECK(tunnel.service_proxy->running());

    tunnel.relay.relay().kill(SIGCONT);
    bool online = tunnel.relay.wait_device_connected(tunnel.device_id, *tunnel.device_proxy, 20s);
    INFO(tunnel.device_proxy->describe());
    REQUIRE(online);
    unique_fd again = open_echo_stream(tunnel.local_port);
}

TEST_CASE("liveness: the device proxy retries a relay that is down with growing, jittered delays "
          "and connects once it is up",
          "[integration][liveness]") {
    relay_fixture relay;
    const std::string device_cs = relay.create_device("backoff-device");
    REQUIRE(relay.stop(SIGTERM) == 0);
    REQUIRE_FALSE(port_listening(relay.port()));  // connections to it are refused now

    auto proxy = relay.spawn("device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(),
                                              device_cs, "127.0.0.1", std::to_string(free_port())});
    // Delays (1 s doubling): at most 1 + 2 + 4 s of sleeping before the 4th attempt fails.
    bool four = wait_until([&] { return reconnect_delays(proxy->stderr_text()).size() >= 4 || !proxy->running(); },
                           20s, 50ms);
    const std::string log = proxy->stderr_text();
    INFO(proxy->describe());
    INFO(log);
    REQUIRE(four);
    CHECK(proxy->running());  // a refused connection never makes it exit
    CHECK(contains(log, "cannot connect to relay"));

    // Attempt k (from 0) waits base_k = min(2^k, 60) s with jitter: the product picks a delay in
    // [base/2, base] (50-100 % of the base, so a fleet spreads out yet the delays still grow).
    // ±0.05 s for the one-decimal log format.
    const std::vector<double> delays = reconnect_delays(log);
    for (std::size_t k = 0; k < 4; ++k) {
        const double base = std::min(60.0, static_cast<double>(1u << k));
        INFO("attempt " << k << ": reconnecting in " << delays[k] << "s, base " << base << "s");
        CHECK(delays[k] <= base + 0.05);
        CHECK(delays[k] >= base / 2 - 0.05);
    }
    CHECK(delays[3] > delays[0]);

    relay.start();  // same data dir, same port
    const auto started = steady::now();
    bool online = relay.wait_device_connected("backoff-device", *proxy, 25s);
    INFO("Connected " << ms_since(started) << " ms after the relay came back");
    CHECK(online);
    CHECK(contains(proxy->stderr_text(), "connected to relay"));
}

TEST_CASE("liveness: a refused device key exits with code 3 only with --exit-on-auth-failure",
          "[integration][liveness]") {
    relay_fixture relay;
    const std::string wrong = with_wrong_key(relay.create_device("auth-device"));
    const std::vector<std::string> base = {bin::device_proxy, "--ca-file", relay.ca_file().string(), wrong,
                                           "127.0.0.1", std::to_string(free_port())};
    {
        auto argv = base;
        argv.push_back("--exit-on-auth-failure");
        auto proxy = relay.spawn("device-proxy-exit", argv);
        std::optional<int> code = proxy->wait_exit(k_fail_timeout);
        INFO(proxy->describe());
        REQUIRE(code.has_value());
        CHECK(*code == 3);
        CHECK(contains(proxy->stderr_text(), "401003"));
    }
    {   // Without it: a 401 is one more reason to retry, never a reason to exit.
        auto proxy = relay.spawn("device-proxy-retry", base);
        bool retried = wait_until([&] { return reconnect_delays(proxy->stderr_text()).size() >= 2 || !proxy->running(); },
                                  k_connect_timeout, 50ms);
        INFO(proxy->describe());
        CHECK(retried);
        CHECK(proxy->running());
        CHECK(count_of(proxy->stderr_text(), "401003") >= 2);
        CHECK(relay.connection_state("auth-device") == "Disconnected");
    }
}

TEST_CASE("liveness: the service proxy keeps listening while the relay is away, closes each local "
          "connection with a logged error, and works again when the relay is back",
          "[integration][liveness]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    { unique_fd first = open_echo_stream(tunnel.local_port); }

    REQUIRE(tunnel.relay.stop(SIGKILL).has_value());
    for (int i = 1; i <= 3; ++i) {
        unique_fd conn = connect_tcp(tunnel.local_port);  // still listening: connect succeeds
        closed_result c = wait_closed(conn.get(), k_fail_timeout);
        INFO("local connection " << i << ": " << c.how << " after " << c.elapsed.count() << " ms");
        CHECK(c.closed);
        CHECK(c.received == 0);
    }
    const std::string log = tunnel.service_proxy->stderr_text();
    INFO(tunnel.service_proxy->describe());
    INFO(log);
    CHECK(count_of(log, "cannot open a stream") >= 3);  // one clear error per connection
    CHECK(contains(log, "cannot connect to relay"));    // naming the reason
    CHECK(tunnel.service_proxy->running());
    CHECK(port_listening(tunnel.local_port));

    tunnel.relay.start();
    bool online = tunnel.relay.wait_device_connected(tunnel.device_id, *tunnel.device_proxy, 25s);
    INFO(tunnel.device_proxy->describe());
    REQUIRE(online);
    unique_fd again = open_echo_stream(tunnel.local_port);
    CHECK(tunnel.service_proxy->running());
}

TEST_CASE("liveness: a connection that stayed up for --backoff-reset starts the next reconnection "
          "from 1 s, and a short one keeps the grown delay",
          "[integration][liveness]") {
    relay_fixture relay;
    const std::string device_cs = relay.create_device("reset-device");
    auto proxy = relay.spawn("device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(), device_cs,
                                              "127.0.0.1", std::to_string(free_port()), "--backoff-reset", "3"});
    REQUIRE(relay.wait_device_connected("reset-device", *proxy));
    // The delay the proxy picks after the relay next goes away.
    auto next_delay_after_kill = [&] {
        const std::size_t before = reconnect_delays(proxy->stderr_text()).size();
        REQUIRE(relay.stop(SIGKILL).has_value());
        bool logged = wait_until([&] { return reconnect_delays(proxy->stderr_text()).size() > before; }, 10s, 20ms);
        INFO(proxy->describe());
        REQUIRE(logged);
        return reconnect_delays(proxy->stderr_text())[before];
    };
    // Grow the delay: the relay stays away for two failed attempts (bases 1 s and 2 s, then 4 s).
    next_delay_after_kill();
    REQUIRE(wait_until([&] { return reconnect_delays(proxy->stderr_text()).size() >= 3; }, 15s, 20ms));
    relay.start();
    REQUIRE(relay.wait_device_connected("reset-device", *proxy, 15s));

    // Up for well under 3 s: the delay keeps growing (base 8 s, so at least 4 s).
    const double after_short = next_delay_after_kill();
    INFO("after a short connection: " << after_short << " s");
    CHECK(after_short >= 3.95);
    CHECK_FALSE(contains(proxy->stderr_text(), "reconnect delay reset"));
    relay.start();
    REQUIRE(relay.wait_device_connected("reset-device", *proxy, 15s));

    // Up for more than 3 s: the next outage starts again at base 1 s.
    std::this_thread::sleep_for(3500ms);  // the condition under test is the connection's age itself
    REQUIRE(relay.device_connected("reset-device"));
    const double after_long = next_delay_after_kill();
    INFO("after a long connection: " << after_long << " s");
    CHECK(after_long <= 1.05);
    CHECK(contains(proxy->stderr_text(), "reconnect delay reset to 1s"));
    relay.start();
    CHECK(relay.wait_device_connected("reset-device", *proxy, 10s));
}
