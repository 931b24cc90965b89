// The relay's admin listener (/metrics, /healthz, /readyz, /api/status) and the device proxy's
// --metrics-listen, scraped from the real binaries while real streams run.
#include <catch2/catch.hpp>

#include <regex>
#include <set>
#include <sstream>

#include "admin_http_client.hpp"
#include "harness.hpp"

using namespace sgit;

namespace {

const std::vector<std::string> k_admin_args = {"--admin-listen", "127.0.0.1:0"};

std::string scrape(const std::string& address) {
    http_answer a = http_get(address, "/metrics");
    INFO("GET http://" << address << "/metrics: " << a.status << " " << a.error);
    REQUIRE(a.status == 200);
    CHECK(contains(a.headers, "text/plain; version=0.0.4"));
    return a.body;
}

double value(const std::string& text, const std::string& series) {
    auto v = metric(text, series);
    INFO("series " << series << " in:\n" << text);
    REQUIRE(v.has_value());
    return *v;
}

// Polls /metrics until every series has its expected value (or the deadline passes), then
// CHECKs them all, so a failure shows what was there.
void expect_metrics(const std::string& address, const std::vector<std::pair<std::string, double>>& expected,
                    millis timeout = k_fail_timeout) {
    std::string text;
    wait_until(
        [&] {
            text = http_get(address, "/metrics").body;
            for (const auto& [series, v] : expected)
                if (metric(text, series) != v) return false;
            return true;
        },
        timeout, 50ms);
    for (const auto& [series, v] : expected) {
        INFO("series " << series << " in:\n" << text);
        CHECK(metric(text, series) == std::optional<double>(v));
    }
}

std::string echo_service_fails(relay_fixture& relay, const std::string& service_cs, const std::string& device) {
    std::vector<std::string> argv = {bin::echo_service, "--ca-file", relay.ca_file().string(), service_cs, device,
                                     "hello"};
    run_result r = run(argv, {}, k_command_timeout);
    INFO(describe(argv, r));
    CHECK(r.exit_code.has_value());
    CHECK(r.exit_code != 0);
    return r.out + r.err;
}

}  // namespace

TEST_CASE("metrics: the relay counts streams, bytes, setup latency, rejections and auth failures, "
          "the device proxy its own",
          "[integration][metrics]") {
    echo_server target;
    tunnel_fixture t({.target_port = target.port(),
                      .device_proxy_args = {"--metrics-listen", "127.0.0.1:0"},
                      .relay_args = k_admin_args});
    const std::string admin = wait_listening_address(t.relay.relay(), "event=AdminListening");
    const std::string device_metrics = wait_listening_address(*t.device_proxy, "event=MetricsListening");
    INFO(t.relay.relay().describe());
    REQUIRE_FALSE(admin.empty());
    REQUIRE_FALSE(device_metrics.empty());

    http_answer health = http_get(admin, "/healthz");
    CHECK(health.status == 200);
    CHECK(health.body == "ok\n");
    CHECK(http_get(admin, "/readyz").status == 200);
    CHECK(http_get(admin, "/no-such-page").status == 404);
    CHECK(http_get(device_metrics, "/healthz").status == 200);

    const std::string before = scrape(admin);
    CHECK(value(before, "streamgate_devices_connected") == 1);
    CHECK(value(before, "streamgate_streams_active") == 0);
    CHECK(value(before, "streamgate_device_connections_total") == 1);
    CHECK(value(before, "streamgate_process_start_time_seconds") > 1.7e9);
    const std::string not_online = R"(streamgate_streams_rejected_total{code="404103",reason="device_not_online"})";
    const std::string unauthorized = R"(streamgate_streams_rejected_total{code="401003",reason="unauthorized"})";
    const std::string bad_signature = R"(streamgate_auth_failures_total{endpoint="streams",reason="bad_signature"})";
    const std::string to_device = R"(streamgate_stream_bytes_total{direction="service_to_device"})";
    const std::string to_service = R"(streamgate_stream_bytes_total{direction="device_to_service"})";
    CHECK(value(before, not_online) == 0);
    CHECK_FALSE(metric(before, bad_signature).has_value());  // auth series appear at their first failure

    SECTION("a stream to an offline device is counted under 404103, a wrong key as an auth failure") {
        t.relay.create_device("offline-device");
        CHECK(contains(echo_service_fails(t.relay, t.service_connection_string, "offline-device"), "404103"));
        CHECK(contains(echo_service_fails(t.relay, with_wrong_key(t.service_connection_string), t.device_id), "401003"));
        expect_metrics(admin, {{not_online, 1}, {unauthorized, 1}, {bad_signature, 1}, {"streamgate_streams_opened_total", 0}});
    }

    SECTION("an echo stream moves the stream and byte counters by exactly what went through") {
        const double opened = value(before, "streamgate_streams_opened_total");
        const double setups = value(before, "streamgate_stream_setup_seconds_count");
        const double sent = value(before, to_device), received = value(before, to_service);
        const std::size_t probe = 4096, rest = 100000;

        unique_fd conn = open_echo_stream(t.local_port, probe);
        // While it is live: counted as active, its bytes already in the totals and on /api/status.
        expect_metrics(admin, {{"streamgate_streams_active", 1},
                               {"streamgate_streams_opened_total", opened + 1},
                               {"streamgate_stream_setup_seconds_count", setups + 1},
                               {to_device, sent + probe},
                               {to_service, received + probe}});
        http_answer status = http_get(admin, "/api/status");
        INFO(status.body);
        CHECK(status.status == 200);
        CHECK(contains(status.body, R"("device":"tunnel-device")"));
        CHECK(contains(status.body, R"("bytesToDevice":4096)"));
        CHECK(contains(status.body, R"("bytesToService":4096)"));
        CHECK(contains(status.body, R"({"id":"tunnel-device","online":true)"));

        const bytes data = random_bytes(rest);
        transfer_result r = transfer(conn.get(), data, {.shutdown_after_send = true, .receive_exactly = rest});
        INFO(r.error);
        REQUIRE(r.ok());
        CHECK(r.received_sha256 == sha256_hex(data));
        conn.reset();

        expect_metrics(admin, {{"streamgate_streams_active", 0},
                               {"streamgate_streams_opened_total", opened + 1},
                               {to_device, sent + probe + rest},
                               {to_service, received + probe + rest}});
        const std::string after = scrape(admin);
        // The histogram is cumulative and consistent: +Inf bucket == count, sum positive.
        CHECK(value(after, R"(streamgate_stream_setup_seconds_bucket{le="+Inf"})") == setups + 1);
        CHECK(value(after, "streamgate_stream_setup_seconds_sum") > 0);
        CHECK(value(after, R"(streamgate_stream_setup_seconds_bucket{le="30"})") == setups + 1);

        expect_metrics(device_metrics, {{"streamgate_device_proxy_control_connected", 1},
                                        {"streamgate_device_proxy_stream_requests_total", 1},
                                        {"streamgate_device_proxy_streams_accepted_total", 1},
                                        {"streamgate_device_proxy_streams_active", 0},
                                        {R"(streamgate_device_proxy_stream_bytes_total{direction="service_to_device"})",
                                         static_cast<double>(probe + rest)},
                                        {R"(streamgate_device_proxy_stream_bytes_total{direction="device_to_service"})",
                                         static_cast<double>(probe + rest)},
                                        {"streamgate_device_proxy_target_connect_failures_total", 0}});
    }

    SECTION("a target that is down is a device-proxy rejection and a target connect failure") {
        const int dead_port = free_port();  // nothing listens there
        std::unique_ptr<process> second = t.relay.spawn(
            "device-proxy-dead-target",
            {bin::device_proxy, "--ca-file", t.relay.ca_file().string(), t.relay.create_device("dead-target"),
             "127.0.0.1", std::to_string(dead_port), "--metrics-listen", "127.0.0.1:0"});
        REQUIRE(t.relay.wait_device_connected("dead-target", *second));
        const std::string second_metrics = wait_listening_address(*second, "event=MetricsListening");
        REQUIRE_FALSE(second_metrics.empty());
        echo_service_fails(t.relay, t.service_connection_string, "dead-target");
        expect_metrics(second_metrics, {{"streamgate_device_proxy_target_connect_failures_total", 1},
                                        {R"(streamgate_device_proxy_streams_rejected_total{reason="target_unreachable"})", 1},
                                        {"streamgate_device_proxy_streams_accepted_total", 0}});
        expect_metrics(admin, {{R"(streamgate_streams_rejected_total{code="0",reason="rejected_by_device"})", 1},
                               {"streamgate_devices_connected", 2}});
    }
}

TEST_CASE("metrics: a device with a wrong key is an auth failure on the control endpoint", "[integration][metrics]") {
    relay_fixture relay(relay_config{.args = k_admin_args});
    const std::string admin = wait_listening_address(relay.relay(), "event=AdminListening");
    REQUIRE_FALSE(admin.empty());
    const std::string cs = with_wrong_key(relay.create_device("wrong-key-device"));
    std::unique_ptr<process> device = relay.spawn(
        "device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(), "--exit-on-auth-failure", cs,
                         "127.0.0.1", "22"});
    CHECK(device->wait_exit(k_fail_timeout) == 3);
    expect_metrics(admin, {{R"(streamgate_auth_failures_total{endpoint="control",reason="bad_signature"})", 1},
                           {"streamgate_devices_connected", 0}});
}

TEST_CASE("metrics: /readyz answers 503 while the relay drains on SIGTERM, /healthz stays 200",
          "[integration][metrics]") {
    echo_server target;
    tunnel_fixture t({.target_port = target.port(),
                      .relay_args = {"--admin-listen", "127.0.0.1:0", "--drain-timeout", "30"}});
    const std::string admin = wait_listening_address(t.relay.relay(), "event=AdminListening");
    REQUIRE_FALSE(admin.empty());
    CHECK(http_get(admin, "/readyz").status == 200);

    unique_fd conn = open_echo_stream(t.local_port);  // keeps the relay draining
    t.relay.relay().kill(SIGTERM);
    http_answer ready;
    bool draining = wait_until(
        [&] {
            ready = http_get(admin, "/readyz");
            return ready.status == 503;
        },
        k_fail_timeout, 50ms);
    INFO(ready.status << " " << ready.body << ready.error);
    CHECK(draining);
    CHECK(ready.body == "draining\n");
    CHECK(http_get(admin, "/healthz").status == 200);
    CHECK(value(http_get(admin, "/metrics").body, "streamgate_ready") == 0);
    CHECK(value(http_get(admin, "/metrics").body, "streamgate_streams_active") == 1);

    conn.reset();  // the last stream ends: the relay exits
    CHECK(t.relay.relay().wait_exit(k_fail_timeout) == 0);
}

TEST_CASE("metrics: --admin-listen off serves nothing, an explicit address that is taken is fatal",
          "[integration][metrics]") {
    {
        relay_fixture relay(relay_config{.args = {"--admin-listen", "off"}});
        CHECK_FALSE(contains(relay.relay().stderr_text(), "AdminListening"));
    }
    temp_dir dir;
    tcp_listener busy;
    std::vector<std::string> argv = {bin::relay, "--data-dir", (dir / "sg").string(), "--listen", "127.0.0.1:0",
                                     "--admin-listen", "127.0.0.1:" + std::to_string(busy.port())};
    run_result r = run(argv, {}, k_command_timeout);
    INFO(describe(argv, r));
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "--admin-listen"));
}

TEST_CASE("metrics: the admin listener refuses Host names that are not loopback (DNS rebinding)",
          "[integration][metrics]") {
    relay_fixture relay(relay_config{.args = k_admin_args});
    const std::string admin = wait_listening_address(relay.relay(), "event=AdminListening");
    REQUIRE_FALSE(admin.empty());
    CHECK(http_get(admin, "/api/status", "attacker.example:9464").status == 403);
    CHECK(http_get(admin, "/api/status", "localhost:9464").status == 200);
    http_answer page = http_get(admin, "/");
    CHECK(page.status == 200);
    CHECK(contains(page.headers, "text/html"));
    CHECK(contains(page.headers, "Content-Security-Policy: default-src 'none'"));
    CHECK(contains(page.body, "fetch(\"api/status\""));
    CHECK_FALSE(contains(page.body, "http://"));   // nothing loaded from elsewhere
    CHECK_FALSE(contains(page.body, "https://"));
}

TEST_CASE("metrics: every metric the Grafana dashboard queries is exported by the relay or the device proxy",
          "[integration][metrics]") {
    // The dashboard's expressions, parsed as JSON by python3: every streamgate_* name in them.
    std::vector<std::string> argv = {
        "python3", "-c",
        "import json, re, sys\n"
        "names = set()\n"
        "def walk(v):\n"
        "    if isinstance(v, dict):\n"
        "        for k, x in v.items():\n"
        "            if k == 'expr' and isinstance(x, str): names.update(re.findall(r'\\bstreamgate_[a-z0-9_]+', x))\n"
        "            else: walk(x)\n"
        "    elif isinstance(v, list):\n"
        "        for x in v: walk(x)\n"
        "walk(json.load(open(sys.argv[1])))\n"
        "print('\\n'.join(sorted(names)))\n",
        SG_GRAFANA_DASHBOARD};
    run_result names = run(argv);
    INFO(describe(argv, names));
    REQUIRE(names.exit_code == 0);

    echo_server target;
    tunnel_fixture t({.target_port = target.port(),
                      .device_proxy_args = {"--metrics-listen", "127.0.0.1:0"},
                      .start_service_proxy = false,
                      .relay_args = k_admin_args});
    const std::string admin = wait_listening_address(t.relay.relay(), "event=AdminListening");
    const std::string device_metrics = wait_listening_address(*t.device_proxy, "event=MetricsListening");
    const std::string exported = scrape(admin) + scrape(device_metrics);

    std::istringstream in(names.out);
    std::set<std::string> used;
    for (std::string name; std::getline(in, name);)
        if (!name.empty()) used.insert(name);
    for (const std::string& name : used) {
        std::string family = std::regex_replace(name, std::regex("_(bucket|sum|count)$"), "");
        bool is_family = contains(exported, "# TYPE " + name + " ");
        bool is_histogram_part = family != name && contains(exported, "# TYPE " + family + " histogram");
        INFO("the dashboard uses " << name);
        CHECK((is_family || is_histogram_part));
    }
    for (const char* needed : {"streamgate_devices_connected", "streamgate_streams_active", "streamgate_streams_opened_total",
                               "streamgate_streams_rejected_total", "streamgate_stream_bytes_total",
                               "streamgate_stream_setup_seconds_bucket"}) {
        INFO("the dashboard should chart " << needed);
        CHECK(used.count(needed) == 1);
    }
}
