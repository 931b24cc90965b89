// Cluster mode (issue 10) test fixture, shared by test_cluster.cpp and test_cluster_registry.cpp:
// a real PostgreSQL 15 (sgtest::pg_server) and two relays on it, n1 and n2, each with its cluster
// listener and admin listener, the second issuing its certificate from the first's CA. Plus the
// helpers both files use: device proxies with --relay lists, echo streams through a --stdio
// service proxy with checksums, and the echo sample as a one-shot stream attempt.
#pragma once

#include <catch2/catch.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "admin_http_client.hpp"
#include "harness.hpp"
#include "../support/pg_server.hpp"
#include "wire.hpp"

namespace sgit {

struct cluster {
    explicit cluster(const std::string& lease = "2")
        : url(pg.create_database("cluster")),
          n1(node("n1", lease, {})),
          n2(node("n2", lease, n1.data_dir())) {}

    relay_config node(const std::string& id, const std::string& lease, const std::filesystem::path& ca_from) {
        return relay_config{.args = {"--registry", url, "--node-id", id, "--cluster-listen", "127.0.0.1:0",
                                     "--cluster-lease", lease, "--admin-listen", "127.0.0.1:0"},
                            .ca_from = ca_from};
    }

    // The service connection string naming one node (admin commands name the last started).
    std::string service_cs(relay_fixture& node) {
        return "HostName=127.0.0.1:" + std::to_string(node.port()) +
               ";SharedAccessKeyName=service;SharedAccessKey=" + policy_key(node, "service");
    }
    std::string relay_arg(relay_fixture& node) { return "127.0.0.1:" + std::to_string(node.port()); }

    // The node the presence table names for `device` ("" when none).
    std::string home_of(const std::string& device) {
        return trim(pg.psql("cluster", "SELECT node_id FROM presence WHERE device_id = '" + device + "'"));
    }
    bool wait_home(const std::string& device, const std::string& node, millis timeout = k_connect_timeout) {
        return wait_until([&] { return home_of(device) == node; }, timeout, 50ms);
    }

    // A node's admin listener ("127.0.0.1:PORT", from its event=AdminListening line).
    static std::string admin_address(relay_fixture& node) {
        return wait_listening_address(node.relay(), "event=AdminListening");
    }
    // /readyz answers 200 on the node's admin listener (not starting, draining or fenced).
    static bool wait_ready(relay_fixture& node, millis timeout = 20s) {
        const std::string admin = admin_address(node);
        return !admin.empty() && wait_until([&] { return http_get(admin, "/readyz").status == 200; }, timeout, 100ms);
    }

    sgtest::pg_server pg;
    std::string url;
    relay_fixture n1, n2;
};

// A device proxy of `device_cs` that dials `relays` in turn, forwarding to `target_port`.
inline std::unique_ptr<process> device_proxy(relay_fixture& any, const std::string& name, const std::string& device_cs,
                                             int target_port, const std::vector<std::string>& relays,
                                             const std::vector<std::string>& options = {}) {
    std::vector<std::string> extra = options;
    for (const auto& r : relays) extra.insert(extra.end(), {"--relay", r});
    return spawn_device_proxy(any, name, device_cs, target_port, extra);
}

// `bytes` random bytes through a --stdio service proxy on `front` to the device's echo target:
// what comes back must hash the same.
inline void expect_echo(relay_fixture& front, const std::string& service_cs, const std::string& device,
                        std::size_t size = 1 << 20) {
    auto [mine, theirs] = socket_pair();
    auto proxy = spawn_stdio_service_proxy(front, service_cs, device, theirs.get());
    theirs.reset();
    const bytes data = random_bytes(size);
    transfer_result t = transfer(mine.get(), data, {.shutdown_after_send = true, .receive_exactly = data.size()});
    INFO(proxy->describe());
    INFO(t.error);
    CHECK(t.ok());
    CHECK(t.received == data.size());
    CHECK(t.received_sha256 == sha256_hex(data));
}

// The echo service on `front`: its exit, what it printed and how long it took.
struct attempt {
    run_result r;
    millis took{0};
};
inline attempt echo_service(relay_fixture& front, const std::string& service_cs, const std::string& device) {
    const auto started = steady::now();
    attempt a;
    a.r = run({bin::echo_service, "--ca-file", front.ca_file().string(), service_cs, device, "hello cluster"});
    a.took = std::chrono::duration_cast<millis>(steady::now() - started);
    return a;
}

}  // namespace sgit
