// Cluster mode behind one address (issue 10): every node's --public-url names a TCP load
// balancer, so a side's data WebSocket may reach a node that did not create the stream. That
// node forwards the connection over the cluster listener to the stream's node (named by the
// stream id). Here the balancer sends connections round robin to n2 and n3 only, while the
// device's control connection goes straight to n1: every join is forwarded.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "admin_http_client.hpp"
#include "harness.hpp"
#include "ssh_client.hpp"
#include "../support/pg_server.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

// A TCP load balancer: connections to 127.0.0.1:port() go to the backends in turn, bytes copied
// both ways until either side ends (then the other gets a FIN).
class tcp_balancer {
public:
    tcp_balancer() { accepter_ = std::jthread([this](std::stop_token stop) { accept_loop(stop); }); }
    ~tcp_balancer() {
        accepter_.request_stop();
        accepter_.join();
        std::lock_guard lock(mutex_);
        for (auto& t : pipes_) t.request_stop();
    }
    int port() const { return listener_.port(); }
    void set_backends(std::vector<int> ports) {
        std::lock_guard lock(mutex_);
        backends_ = std::move(ports);
    }
    int connections() const { return connections_; }

private:
    void accept_loop(std::stop_token stop) {
        while (!stop.stop_requested()) {
            unique_fd client = listener_.accept(200ms, stop);
            if (!client) continue;
            int backend = 0;
            {
                std::lock_guard lock(mutex_);
                if (backends_.empty()) continue;
                backend = backends_[next_++ % backends_.size()];
            }
            unique_fd server = connect_tcp(backend);
            connections_++;
            std::lock_guard lock(mutex_);
            pipes_.emplace_back([c = std::move(client), s = std::move(server)](std::stop_token st) mutable {
                copy_both_ways(c.get(), s.get(), st);
            });
        }
    }
    static void copy_both_ways(int a, int b, std::stop_token stop) {
        bool open[2] = {true, true}; // a -> b, b -> a
        char buffer[64 * 1024];
        while ((open[0] || open[1]) && !stop.stop_requested()) {
            pollfd fds[2] = {{a, static_cast<short>(open[0] ? POLLIN : 0), 0}, {b, static_cast<short>(open[1] ? POLLIN : 0), 0}};
            if (::poll(fds, 2, 200) < 0) return;
            for (int i = 0; i < 2; ++i) {
                if (!open[i] || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                int from = i == 0 ? a : b, to = i == 0 ? b : a;
                ssize_t n = ::read(from, buffer, sizeof buffer);
                if (n <= 0) {
                    if (n < 0) return; // a reset: the destructor closes both
                    ::shutdown(to, SHUT_WR);
                    open[i] = false;
                    continue;
                }
                for (ssize_t sent = 0; sent < n;) {
                    ssize_t w = ::send(to, buffer + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
                    if (w <= 0) return;
                    sent += w;
                }
            }
        }
    }

    tcp_listener listener_;
    std::mutex mutex_;
    std::vector<int> backends_;
    std::size_t next_ = 0;
    std::atomic<int> connections_{0};
    std::vector<std::jthread> pipes_;
    std::jthread accepter_;
};

struct balanced_cluster {
    balanced_cluster()
        : url(pg.create_database("cluster")),
          n1(node("n1", {})),
          n2(node("n2", n1.data_dir())),
          n3(node("n3", n1.data_dir())) {
        balancer.set_backends({n2.port(), n3.port()});
    }
    relay_config node(const std::string& id, const std::filesystem::path& ca_from) {
        return relay_config{.args = {"--registry", url, "--node-id", id, "--cluster-listen", "127.0.0.1:0",
                                     "--admin-listen", "127.0.0.1:0", "--public-url",
                                     "wss://127.0.0.1:" + std::to_string(balancer.port())},
                            .ca_from = ca_from};
    }
    std::string service_cs(relay_fixture& node) {
        return "HostName=127.0.0.1:" + std::to_string(node.port()) +
               ";SharedAccessKeyName=service;SharedAccessKey=" + policy_key(node, "service");
    }
    double metric_of(relay_fixture& node, const std::string& series) {
        const std::string admin = wait_listening_address(node.relay(), "event=AdminListening");
        return metric(http_get(admin, "/metrics").body, series).value_or(-1);
    }

    tcp_balancer balancer; // first: the nodes' --public-url names it
    sgtest::pg_server pg;
    std::string url;
    relay_fixture n1, n2, n3;
};

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

}  // namespace

TEST_CASE("cluster: behind one address, a join reaching another node is forwarded to the stream's node "
          "(echo, 16 MiB each way, SSH)", "[integration][postgres][cluster]") {
    balanced_cluster c;
    echo_server target;
    const std::string device_cs = c.n3.create_device("cl-lb"); // admin commands name the last node started
    auto proxy = spawn_device_proxy(c.n1, "device-proxy", device_cs, target.port(),
                                    {"--relay", "127.0.0.1:" + std::to_string(c.n1.port())});
    REQUIRE(c.n1.wait_device_connected("cl-lb", *proxy));

    int streams = 0;
    for (relay_fixture* front : {&c.n2, &c.n3, &c.n1}) {
        // Asked of n2, n3 (cross-node) and of the home itself; both sides join through the balancer.
        auto [mine, theirs] = socket_pair();
        auto service = spawn_stdio_service_proxy(*front, c.service_cs(*front), "cl-lb", theirs.get(),
                                                 {"--warm-connections", "false"});
        theirs.reset();
        const bytes data = random_bytes(front == &c.n2 ? 16 << 20 : 1 << 20);
        transfer_result t = transfer(mine.get(), data, {.shutdown_after_send = true, .receive_exactly = data.size()});
        INFO(service->describe());
        INFO(tail(c.n1.relay().stderr_text(), 2000));
        CHECK(t.ok());
        CHECK(t.received == data.size());
        CHECK(t.received_sha256 == sha256_hex(data));
        ++streams;
    }
    // Every join went through n2 or n3 and on to n1, which paired them.
    const std::string n1_log = c.n1.relay().stderr_text();
    CHECK(count(n1_log, "event=StreamEstablished device=cl-lb") == static_cast<std::size_t>(streams));
    const auto forwarded = count(c.n2.relay().stderr_text(), "event=JoinForwarded") +
                           count(c.n3.relay().stderr_text(), "event=JoinForwarded");
    CHECK(forwarded == static_cast<std::size_t>(2 * streams));
    CHECK(c.metric_of(c.n1, "streamgate_cluster_joins_total{direction=\"received\"}") == 2.0 * streams);
    CHECK(c.metric_of(c.n1, "streamgate_cluster_presence_rows") == 1.0);
    CHECK(c.metric_of(c.n2, "streamgate_cluster_presence_rows") == 0.0);
    CHECK(c.metric_of(c.n2, "streamgate_cluster_lease_age_seconds") < 10.0);
    CHECK(c.metric_of(c.n2, "streamgate_cluster_database_errors_total") == 0.0);
    CHECK(c.metric_of(c.n2, "streamgate_cluster_joins_total{direction=\"forwarded\"}") +
              c.metric_of(c.n3, "streamgate_cluster_joins_total{direction=\"forwarded\"}") ==
          2.0 * streams);

    SECTION("SSH to a real sshd") {
        sshd_fixture sshd;
        const std::string ssh_cs = c.n3.create_device("cl-lb-ssh");
        auto ssh_proxy = spawn_device_proxy(c.n1, "device-proxy-ssh", ssh_cs, sshd.port(),
                                            {"--relay", "127.0.0.1:" + std::to_string(c.n1.port())});
        REQUIRE(c.n1.wait_device_connected("cl-lb-ssh", *ssh_proxy));
        auto [mine, theirs] = socket_pair();
        auto service = spawn_stdio_service_proxy(c.n3, c.service_cs(c.n3), "cl-lb-ssh", theirs.get());
        theirs.reset();
        ssh_client ssh(std::move(mine));
        CHECK(ssh.host_key() == sshd.host_key_blob());
        ssh.authenticate(sshd.user(), sshd.user_public_key(), sshd.user_key());
        exec_result r = ssh.exec("echo through-the-balancer");
        INFO(r.err);
        CHECK(r.exit_status == 0);
        CHECK(r.out == "through-the-balancer\n");
    }
}

TEST_CASE("cluster: a forwarded join with a bad token gets the stream node's 401, a stream of a node that "
          "is not live is refused where it arrived", "[integration][postgres][cluster]") {
    balanced_cluster c;
    const std::string missing = "/bridges/any/cl-none/n1." + std::string(32, 'a');
    wire_result w = wire_script(c.n2, {step({{"op", "connect"}, {"conn", "c"}}),
                                       step({{"op", "upgrade"}, {"label", "join"}, {"conn", "c"}, {"path", missing},
                                             {"headers", std::vector<std::string>{"Authorization: Bearer wrong"}}})});
    INFO(w.describe());
    CHECK(w.at("join").status() == 401);
    CHECK(w.at("join").error_code() == 401003);
    CHECK(contains(c.n2.relay().stderr_text(), "event=JoinForwarded"));
    CHECK(wait_until([&] { return contains(c.n1.relay().stderr_text(), "via n2"); }, 5s));

    const std::string dead = "/bridges/any/cl-none/n9." + std::string(32, 'a');
    wire_result d = wire_script(c.n3, {step({{"op", "connect"}, {"conn", "c"}}),
                                       step({{"op", "upgrade"}, {"label", "join"}, {"conn", "c"}, {"path", dead},
                                             {"headers", std::vector<std::string>{"Authorization: Bearer wrong"}}})});
    INFO(d.describe());
    CHECK(d.at("join").status() == 401);
    CHECK(d.at("join").error_code() == 401003);
    CHECK(contains(d.at("join").get("j.message"), "relay n9 is not live"));
    CHECK(contains(c.n3.relay().stderr_text(), "event=JoinForwardFailed peer="));
}

TEST_CASE("cluster: every node's status page says which node holds each device", "[integration][postgres][cluster]") {
    balanced_cluster c;
    echo_server target;
    const std::string device_cs = c.n3.create_device("cl-status");
    c.n3.create_device("cl-status-off");
    auto proxy = spawn_device_proxy(c.n1, "device-proxy", device_cs, target.port(),
                                    {"--relay", "127.0.0.1:" + std::to_string(c.n1.port())});
    REQUIRE(c.n1.wait_device_connected("cl-status", *proxy));
    for (relay_fixture* node : {&c.n1, &c.n2}) {
        const std::string admin = wait_listening_address(node->relay(), "event=AdminListening");
        std::string body;
        // The device list is re-read every 2 s.
        CHECK(wait_until([&] {
            body = http_get(admin, "/api/status").body;
            return contains(body, R"({"id":"cl-status","online":true,"enabled":true,)") &&
                   contains(body, R"("node":"n1"})");
        }, 5s, 200ms));
        INFO(body);
        CHECK(contains(body, R"({"id":"cl-status-off","online":false,"enabled":true,)"));
        CHECK(contains(body, R"("devicesOnline":1,)"));
        CHECK(contains(body, node == &c.n1 ? R"("devicesHere":1,)" : R"("devicesHere":0,)"));
    }
    // What a browser shows on n2's page (headless Chromium, scripts run).
    if (!std::filesystem::exists("/usr/bin/chromium")) {
        WARN("SKIPPED: chromium is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    temp_dir profile;
    const std::string admin2 = wait_listening_address(c.n2.relay(), "event=AdminListening");
    run_result page = run({"/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           "--user-data-dir=" + profile.path().string(), "--virtual-time-budget=4000", "--dump-dom",
                           "http://" + admin2 + "/"});
    INFO(page.err.substr(0, 2000));
    CHECK(contains(page.out, R"(<tr data-device="cl-status">)"));
    CHECK(contains(page.out, R"(<td class="node">n1</td>)"));
    CHECK(contains(page.out, "node n2 "));
    CHECK(contains(page.out, R"(<th class="cluster-only">Node</th>)"));
}
