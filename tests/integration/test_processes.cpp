// Processes that die (kill -9) or are told to stop (SIGTERM/SIGINT with a drain timeout).
#include <catch2/catch.hpp>

#include <sys/socket.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "harness.hpp"

using namespace sgit;

namespace {

constexpr std::size_t MiB = 1024 * 1024;

long ms_since(steady::time_point t) {
    return static_cast<long>(std::chrono::duration_cast<millis>(steady::now() - t).count());
}

// One more echo round trip on an established stream.
void check_echo(int fd, std::size_t size, const std::string& what) {
    const bytes data = random_bytes(size);
    transfer_result r = transfer(fd, data, {.receive_exactly = size, .timeout = k_connect_timeout});
    INFO(what << ": " << r.error);
    CHECK(r.ok());
    CHECK(r.received_sha256 == sha256_hex(data));
}

// Ends a stream cleanly from the client: FIN, then the echo target's FIN comes back.
void finish_stream(int fd) {
    ::shutdown(fd, SHUT_WR);
    closed_result c = wait_closed(fd, k_connect_timeout);
    INFO("end of stream: " << c.how);
    CHECK(c.how == "EOF");
}

// "Promptly": a peer that died is noticed from the closed connection, not from keepalive
// timeouts (all processes here run with the default 20 s ping interval, 40 s to declare death).
constexpr millis k_prompt = 5s;

}  // namespace

TEST_CASE("processes: kill -9 of the device proxy mid-stream closes the service side's connection "
          "within seconds",
          "[integration][processes]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    unique_fd client = open_echo_stream(tunnel.local_port, 256 * 1024);

    tunnel.device_proxy->kill(SIGKILL);
    REQUIRE(tunnel.device_proxy->wait_exit(k_prompt).has_value());
    const auto killed_at = steady::now();
    closed_result c = wait_closed(client.get(), k_prompt + 10s);
    INFO("client connection: " << c.how << " after " << c.elapsed.count() << " ms");
    INFO(tunnel.service_proxy->describe());
    CHECK(c.closed);
    CHECK(c.elapsed <= k_prompt);
    CHECK(tunnel.service_proxy->running());
    bool offline = wait_until([&] { return tunnel.relay.connection_state(tunnel.device_id) == "Disconnected"; },
                              k_prompt, 100ms);
    INFO("Disconnected after " << ms_since(killed_at) << " ms");
    CHECK(offline);

    // A restarted device proxy serves new streams.
    tunnel.respawn_device_proxy();
    REQUIRE(tunnel.relay.wait_device_connected(tunnel.device_id, *tunnel.device_proxy));
    unique_fd again = open_echo_stream(tunnel.local_port);
}

TEST_CASE("processes: kill -9 of the relay mid-stream: both proxies close their local connections "
          "promptly, and the device proxy reconnects to the restarted relay",
          "[integration][processes]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    unique_fd client = open_echo_stream(tunnel.local_port, 256 * 1024);
    REQUIRE(target.connections_open() == 1);

    REQUIRE(tunnel.relay.stop(SIGKILL).has_value());
    const auto killed_at = steady::now();
    closed_result c = wait_closed(client.get(), k_prompt + 10s);
    INFO("service side: client connection " << c.how << " after " << c.elapsed.count() << " ms");
    CHECK(c.closed);
    CHECK(c.elapsed <= k_prompt);
    bool target_closed = wait_until([&] { return target.connections_open() == 0; }, k_prompt + 10s);
    INFO("device side: target connection closed after " << ms_since(killed_at) << " ms");
    CHECK(target_closed);
    CHECK(ms_since(killed_at) <= k_prompt.count() + 500);
    CHECK(tunnel.device_proxy->running());
    CHECK(tunnel.service_proxy->running());

    tunnel.relay.start();  // same data dir and port
    const auto restarted_at = steady::now();
    bool online = tunnel.relay.wait_device_connected(tunnel.device_id, *tunnel.device_proxy, 25s);
    INFO(tunnel.device_proxy->describe());
    INFO("Connected " << ms_since(restarted_at) << " ms after the restart");
    REQUIRE(online);
    unique_fd again = open_echo_stream(tunnel.local_port, 256 * 1024);
    CHECK(target.connections_accepted() == 2);
}

TEST_CASE("processes: registry writes interrupted by kill -9 leave a consistent database and the "
          "relay restarts on it",
          "[integration][processes][registry]") {
    relay_fixture relay;
    // Devices whose proxies connect and disconnect make the relay itself write (connectionState).
    const int proxies = 3;
    std::vector<std::unique_ptr<process>> device_proxies;
    for (int i = 0; i < proxies; ++i) {
        const std::string id = "flap-" + std::to_string(i);
        device_proxies.push_back(relay.spawn(id, {bin::device_proxy, "--ca-file", relay.ca_file().string(),
                                                  relay.create_device(id), "127.0.0.1", std::to_string(free_port()),
                                                  "--ping-interval", "1"}));
    }
    for (int i = 0; i < proxies; ++i)
        REQUIRE(relay.wait_device_connected("flap-" + std::to_string(i), *device_proxies[i]));

    // Admin commands create (and update) devices in the background; some of them are killed -9
    // in the middle of their write.
    std::mutex m;
    std::set<std::string> created;  // create reported success: must survive
    std::atomic<bool> stop{false};
    std::atomic<int> attempts{0}, killed{0};
    std::string writer_error;
    std::thread writer([&] {
        std::mt19937 random(std::random_device{}());
        for (int n = 0; !stop; ++n) {
            const std::string id = "bulk-" + std::to_string(n);
            ++attempts;
            if (n % 3 == 2) {  // killed at a random moment of its run
                process p("admin-killed", {bin::relay, "--data-dir", relay.data_dir().string(), "device-identity",
                                           "create", "--device-id", id},
                          relay.dir().path());
                // An admin command takes 10-40 ms here: most kills land inside its run.
                std::this_thread::sleep_for(millis(std::uniform_int_distribution<int>(0, 12)(random)));
                p.kill(SIGKILL);
                if (p.wait_exit(k_command_timeout) == 128 + SIGKILL) ++killed;
                continue;
            }
            run_result r = relay.admin({"device-identity", "create", "--device-id", id});
            if (r.exit_code == 0) {
                std::lock_guard lock(m);
                created.insert(id);
            } else if (writer_error.empty()) {
                writer_error = describe({"device-identity", "create", "--device-id", id}, r);
            }
        }
    });
    struct stop_writer {
        std::atomic<bool>& stop;
        std::thread& t;
        ~stop_writer() {
            stop = true;
            if (t.joinable()) t.join();
        }
    } stopper{stop, writer};

    std::mt19937 random(std::random_device{}());
    for (int round = 1; round <= 3; ++round) {
        // A random moment while writes are going on (the relay restarted and the proxies are
        // reconnecting: it is writing connectionState too).
        const int before = attempts;
        REQUIRE(wait_until([&] { return attempts >= before + 2; }, k_command_timeout));
        std::this_thread::sleep_for(millis(std::uniform_int_distribution<int>(0, 300)(random)));
        REQUIRE(relay.stop(SIGKILL).has_value());
        relay.start();
    }
    // At least one admin command must have died mid-run for the check below to mean something.
    wait_until([&] { return killed > 0; }, k_command_timeout);
    stop = true;
    writer.join();

    const std::vector<std::string> check = {"sqlite3", (relay.data_dir() / "registry.db").string(),
                                            "PRAGMA integrity_check; PRAGMA foreign_key_check;"};
    run_result integrity = run(check);
    INFO(describe(check, integrity));
    CHECK(integrity.exit_code == 0);
    CHECK(trim(integrity.out) == "ok");
    INFO(attempts << " creates, " << killed << " killed -9 mid-run, " << created.size() << " succeeded");
    CHECK(writer_error.empty());
    CHECK(killed > 0);

    // The restarted relay serves the registry: every acknowledged create is there.
    run_result list = relay.admin({"device-identity", "list"});
    INFO(describe({"device-identity", "list"}, list));
    REQUIRE(list.exit_code == 0);
    std::vector<std::string> missing;
    for (const auto& id : created)
        if (!contains(list.out, "\"" + id + "\"")) missing.push_back(id);
    INFO("missing: " << missing.size());
    CHECK(missing.empty());
    for (int i = 0; i < proxies; ++i)
        CHECK(relay.wait_device_connected("flap-" + std::to_string(i), *device_proxies[i], 25s));
    CHECK(relay.relay().running());
}

TEST_CASE("processes: SIGTERM on the relay stops accepting, lets a live stream finish, then exits 0 "
          "within the drain timeout",
          "[integration][processes][drain]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(), .relay_args = {"--drain-timeout", "5"}});
    unique_fd client = open_echo_stream(tunnel.local_port);

    tunnel.relay.relay().kill(SIGTERM);
    const auto term_at = steady::now();
    // Stops accepting: the port closes and a new connection is refused.
    bool closed_port = wait_until([&] { return !port_listening(tunnel.relay.port()); }, 2s);
    CHECK(closed_port);
    connect_result attempt = try_connect("127.0.0.1", tunnel.relay.port(), 2s);
    INFO("new connection to the draining relay: " << attempt.describe());
    CHECK(attempt.error == ECONNREFUSED);
    // Control connections are closed with a reason (503001 ServiceUnavailable).
    CHECK(wait_until([&] { return contains(tunnel.device_proxy->stderr_text(), "503001"); }, 3s));

    // The live stream keeps working…
    CHECK(tunnel.relay.relay().running());
    check_echo(client.get(), 1 * MiB, "live stream after SIGTERM");
    // …until it ends; then the relay exits 0 without waiting for the rest of the drain timeout.
    finish_stream(client.get());
    std::optional<int> code = tunnel.relay.relay().wait_exit(8s);
    const long exit_ms = ms_since(term_at);
    INFO(tunnel.relay.relay().describe());
    INFO("exited " << exit_ms << " ms after SIGTERM");
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(exit_ms <= 5000);
    CHECK(contains(tunnel.relay.relay().stderr_text(), "event=StreamClosed"));
    CHECK(tunnel.device_proxy->running());  // and it keeps trying to reconnect
}

TEST_CASE("processes: SIGTERM on the relay with a stream that never ends exits 0 after the drain "
          "timeout and closes the stream",
          "[integration][processes][drain]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(), .relay_args = {"--drain-timeout", "3"}});
    unique_fd client = open_echo_stream(tunnel.local_port);

    tunnel.relay.relay().kill(SIGTERM);
    const auto term_at = steady::now();
    std::optional<int> code = tunnel.relay.relay().wait_exit(10s);
    const long exit_ms = ms_since(term_at);
    INFO(tunnel.relay.relay().describe());
    INFO("exited " << exit_ms << " ms after SIGTERM (drain timeout 3 s)");
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(exit_ms >= 2500);
    CHECK(exit_ms <= 3000 + 2000);
    closed_result c = wait_closed(client.get(), k_prompt);
    INFO("client connection: " << c.how);
    CHECK(c.closed);
    CHECK(wait_until([&] { return target.connections_open() == 0; }, k_prompt));
}

TEST_CASE("processes: SIGTERM on the service proxy stops listening, lets the live stream finish, "
          "exits 0",
          "[integration][processes][drain]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    unique_fd client = open_echo_stream(tunnel.local_port);

    tunnel.service_proxy->kill(SIGTERM);
    CHECK(wait_until([&] { return !port_listening(tunnel.local_port); }, 2s));
    CHECK(tunnel.service_proxy->running());
    check_echo(client.get(), 256 * 1024, "live stream after SIGTERM");
    finish_stream(client.get());
    std::optional<int> code = tunnel.service_proxy->wait_exit(3s);
    INFO(tunnel.service_proxy->describe());
    REQUIRE(code.has_value());
    CHECK(*code == 0);

    // Idle, SIGINT: exits 0 at once.
    tunnel.respawn_service_proxy();
    tunnel.service_proxy->kill(SIGINT);
    code = tunnel.service_proxy->wait_exit(3s);
    INFO(tunnel.service_proxy->describe());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
}

TEST_CASE("processes: SIGTERM on the device proxy takes the device offline, lets the live stream "
          "finish, then exits 0",
          "[integration][processes][drain]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    unique_fd client = open_echo_stream(tunnel.local_port);
    tunnel.device_proxy->kill(SIGTERM);
    bool offline = wait_until([&] { return tunnel.relay.connection_state(tunnel.device_id) == "Disconnected"; },
                              3s, 100ms);
    CHECK(offline);
    CHECK(tunnel.device_proxy->running());
    check_echo(client.get(), 256 * 1024, "live stream after SIGTERM");
    finish_stream(client.get());
    std::optional<int> code = tunnel.device_proxy->wait_exit(3s);
    INFO(tunnel.device_proxy->describe());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
}

TEST_CASE("processes: SIGINT on an idle device proxy exits 0 at once", "[integration][processes][drain]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    tunnel.device_proxy->kill(SIGINT);
    std::optional<int> code = tunnel.device_proxy->wait_exit(3s);
    INFO(tunnel.device_proxy->describe());
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(tunnel.relay.connection_state(tunnel.device_id) == "Disconnected");
}

TEST_CASE("processes: a second SIGTERM stops a draining device proxy at once",
          "[integration][processes][drain]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});
    // A live stream that does not end: the first SIGTERM would wait the (default 10 s) drain.
    unique_fd client = open_echo_stream(tunnel.local_port);
    tunnel.device_proxy->kill(SIGTERM);
    REQUIRE(wait_until([&] { return contains(tunnel.device_proxy->stderr_text(), "live stream(s) may finish"); }, 3s));
    CHECK(tunnel.device_proxy->running());
    tunnel.device_proxy->kill(SIGTERM);
    const auto second_at = steady::now();
    std::optional<int> code = tunnel.device_proxy->wait_exit(5s);
    INFO(tunnel.device_proxy->describe());
    INFO("exited " << ms_since(second_at) << " ms after the second SIGTERM");
    REQUIRE(code.has_value());
    CHECK(*code == 0);
    CHECK(ms_since(second_at) <= 1500);
    closed_result c = wait_closed(client.get(), k_prompt);
    CHECK(c.closed);
}

TEST_CASE("processes: after hundreds of streams, some reset by their clients, every process exits 0 "
          "on SIGTERM",
          "[integration][processes][drain]") {
    echo_server target;
    // Six clients open streams as fast as they can: lift the per-device admission rate (100/s by
    // default, tested in limits), which this test is not about.
    tunnel_fixture tunnel({.target_port = target.port(),
                           .relay_args = {"--device-stream-rate", "100000", "--device-stream-burst", "100000"}});
    std::atomic<int> next{0}, ok{0};
    constexpr int streams = 300;
    {
        std::vector<std::jthread> workers;
        for (int w = 0; w < 6; ++w) {
            workers.emplace_back([&] {
                for (int i = next++; i < streams; i = next++) {
                    try {
                        unique_fd conn = connect_tcp(tunnel.local_port);
                        const bytes data = random_bytes(64 * 1024 + static_cast<std::size_t>(i) * 1000);
                        if (i % 7 == 3) {  // reset half-way
                            transfer(conn.get(), std::span(data).first(data.size() / 2),
                                     {.receive_exactly = data.size() / 2, .timeout = k_connect_timeout});
                            linger l{1, 0};
                            ::setsockopt(conn.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l);
                            continue;
                        }
                        transfer_result r = transfer(conn.get(), data, {.shutdown_after_send = true, .timeout = k_connect_timeout});
                        if (r.ok() && r.received_sha256 == sha256_hex(data)) ++ok;
                    } catch (const std::exception&) {
                    }
                }
            });
        }
    }
    CHECK(ok >= streams * 6 / 7 - 5);
    for (process* p : {tunnel.service_proxy.get(), tunnel.device_proxy.get(), &tunnel.relay.relay()}) {
        p->kill(SIGTERM);
        std::optional<int> code = p->wait_exit(15s);
        INFO(p->describe());
        CHECK(code == 0);
    }
}

namespace {

// LISTEN sockets on 127.0.0.1:port in /proc/net/tcp (one per thread of a relay that spreads its
// port over its threads).
int listening_sockets(int port) {
    char wanted[32];
    std::snprintf(wanted, sizeof wanted, "0100007F:%04X", port);
    int count = 0;
    for (const auto& r : read_tcp_tables("/proc/net"))
        if (r.local == wanted && r.state == "0A") ++count;
    return count;
}

}  // namespace

TEST_CASE("processes: the relay listens once per thread, a second relay on its port fails with "
          "cannot listen, and the first keeps serving",
          "[integration][processes][listen]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(), .relay_args = {"--threads", "2"}});
    // Two sockets on one port: the kernel spreads new connections over the relay's threads.
    CHECK(listening_sockets(tunnel.relay.port()) == 2);

    temp_dir other;
    run_result second = run({bin::relay, "--data-dir", (other / "data").string(), "--listen",
                             "127.0.0.1:" + std::to_string(tunnel.relay.port()), "--threads", "2",
                             "--admin-listen", "off"});
    INFO(describe({bin::relay, "(second relay on the same port)"}, second));
    REQUIRE(second.exit_code.has_value());
    CHECK(*second.exit_code != 0);
    CHECK(contains(second.err, "cannot listen on 127.0.0.1:" + std::to_string(tunnel.relay.port())));
    CHECK(contains(second.err, "Address already in use"));
    CHECK(listening_sockets(tunnel.relay.port()) == 2);

    // Streams through both threads' sockets still work, one after another.
    for (int i = 0; i < 20; ++i) {
        unique_fd client = open_echo_stream(tunnel.local_port);
        check_echo(client.get(), 64 * 1024, "stream " + std::to_string(i));
        finish_stream(client.get());
    }
    CHECK(tunnel.relay.relay().running());
}
