// Raw TCP streams through device proxy + service proxy: integrity, concurrency, reuse.
#include <catch2/catch.hpp>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "harness.hpp"

using namespace sgit;

namespace {
constexpr std::size_t MiB = 1024 * 1024;
}

TEST_CASE("streams: 16 MiB of random bytes each way arrive intact", "[integration][streams]") {
    constexpr std::size_t size = 16 * MiB;
    const bytes to_target = random_bytes(size);
    const bytes to_client = random_bytes(size);

    tcp_listener target;
    tunnel_fixture tunnel({.target_port = target.port()});

    // The target sends its 16 MiB while reading until EOF, then closes.
    transfer_result at_target;
    std::jthread target_thread([&](std::stop_token stop) {
        unique_fd conn = target.accept(k_transfer_timeout, stop);
        if (!conn) {
            at_target.error = "no connection reached the target";
            return;
        }
        at_target = transfer(conn.get(), to_client, {.timeout = k_transfer_timeout, .stop = stop});
    });

    // The client sends its 16 MiB, then shutdown(SHUT_WR), and reads until EOF.
    unique_fd client = connect_tcp(tunnel.local_port);
    transfer_result at_client = transfer(
        client.get(), to_target, {.shutdown_after_send = true, .timeout = k_transfer_timeout});
    client.reset();
    target_thread.join();

    INFO(tunnel.service_proxy->describe());
    INFO(tunnel.device_proxy->describe());
    INFO("client: " << at_client.error);
    INFO("target: " << at_target.error);
    CHECK(at_client.ok());
    CHECK(at_target.ok());
    CHECK(at_target.received == size);
    CHECK(at_target.received_sha256 == sha256_hex(to_target));
    CHECK(at_client.received == size);
    CHECK(at_client.received_sha256 == sha256_hex(to_client));
}

namespace {
// All clients meet here once their stream is established, so the streams are open at the same
// time; waits are bounded.
class rendezvous {
public:
    void arrive() {
        std::lock_guard lock(m_);
        ++arrived_;
        cv_.notify_all();
    }
    bool wait_arrivals(int n, millis timeout) {
        std::unique_lock lock(m_);
        return cv_.wait_for(lock, timeout, [&] { return arrived_ >= n; });
    }
    bool wait_release(millis timeout) {
        std::unique_lock lock(m_);
        return cv_.wait_for(lock, timeout, [&] { return released_; });
    }
    void release() {
        std::lock_guard lock(m_);
        released_ = true;
        cv_.notify_all();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    int arrived_ = 0;
    bool released_ = false;
};
}  // namespace

TEST_CASE("streams: 20 concurrent streams through one service proxy port", "[integration][streams]") {
    constexpr int streams = 20;
    constexpr std::size_t half = MiB / 2;

    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});

    std::vector<bytes> payloads;
    for (int i = 0; i < streams; ++i) payloads.push_back(random_bytes(2 * half));
    std::vector<transfer_result> first(streams), second(streams);
    rendezvous meet;
    struct release_on_exit {
        rendezvous& r;
        ~release_on_exit() { r.release(); }
    };

    bool all_established = false;
    int open_at_target = 0;
    {
        std::vector<std::jthread> clients;
        release_on_exit guard{meet};  // declared after `clients`: releases before they are joined
        for (int i = 0; i < streams; ++i) {
            clients.emplace_back([&, i] {
                try {
                    unique_fd conn = connect_tcp(tunnel.local_port);
                    const std::span<const unsigned char> data(payloads[i]);
                    // First half echoed back: the stream is established end to end.
                    first[i] = transfer(conn.get(), data.first(half), {.receive_exactly = half});
                    meet.arrive();
                    if (!first[i].ok()) return;
                    if (!meet.wait_release(k_transfer_timeout)) {
                        second[i].error = "never released";
                        return;
                    }
                    second[i] = transfer(conn.get(), data.last(half), {.receive_exactly = half});
                } catch (const std::exception& e) {
                    first[i].error = e.what();
                    meet.arrive();
                }
            });
        }
        all_established = meet.wait_arrivals(streams, k_transfer_timeout);
        open_at_target = target.connections_open();
        meet.release();
    }  // joins the clients

    CHECK(all_established);
    CHECK(open_at_target == streams);  // all 20 were open at the target at the same time
    std::string problems;
    int intact = 0;
    for (int i = 0; i < streams; ++i) {
        const std::span<const unsigned char> data(payloads[i]);
        const std::string prefix = "stream " + std::to_string(i) + ": ";
        if (!first[i].ok()) problems += prefix + "first half: " + first[i].error + "\n";
        else if (first[i].received_sha256 != sha256_hex(data.first(half))) problems += prefix + "first half corrupted\n";
        else if (!second[i].ok()) problems += prefix + "second half: " + second[i].error + "\n";
        else if (second[i].received_sha256 != sha256_hex(data.last(half))) problems += prefix + "second half corrupted\n";
        else ++intact;
    }
    INFO(problems);
    CHECK(intact == streams);
    CHECK(target.connections_accepted() == streams);
}

TEST_CASE("streams: the device proxy serves sequential streams and keeps running", "[integration][streams]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port()});

    for (int i = 1; i <= 2; ++i) {
        const bytes data = random_bytes(256 * 1024);
        {
            unique_fd conn = connect_tcp(tunnel.local_port);
            transfer_result r = transfer(conn.get(), data, {.receive_exactly = data.size()});
            INFO("stream " << i << ": " << r.error);
            INFO(tunnel.device_proxy->describe());
            CHECK(r.ok());
            CHECK(r.received_sha256 == sha256_hex(data));
        }
        // The stream is over end to end: the device proxy closed its target connection.
        bool closed = wait_until([&] { return target.connections_open() == 0; }, k_connect_timeout);
        INFO(tunnel.device_proxy->describe());
        CHECK(closed);
        CHECK(tunnel.device_proxy->running());
        CHECK(tunnel.service_proxy->running());
    }
    CHECK(target.connections_accepted() == 2);
    CHECK(tunnel.relay.device_connected(tunnel.device_id));
}

TEST_CASE("streams: the service proxy joins through its request's connection and clients resume TLS sessions",
          "[integration][streams]") {
    // Counted from the relay's debug line for each TLS handshake ("peer=… tls=… resumed=…"),
    // without connections opened ahead.
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(),
                           .device_proxy_args = {"--warm-connections", "false"},
                           .service_proxy_args = {"--warm-connections", "false"},
                           .relay_args = {"--verbose"}});
    constexpr int streams = 4;
    for (int i = 0; i < streams; ++i) {
        unique_fd stream = open_echo_stream(tunnel.local_port);
    }
    const std::string log = tunnel.relay.relay().stderr_text();
    INFO(tail(log, 4000));
    // Device proxy: its control connection, then one connection per stream; service proxy: one
    // per stream, carrying the POST and then the WebSocket join (three per stream without reuse).
    CHECK(count_of(log, " resumed=") == 1 + 2 * streams);
    // Every handshake but each client's first resumes a session.
    CHECK(count_of(log, " resumed=true") == 2 * streams - 1);
    CHECK(count_of(log, "event=StreamEstablished") == streams);
}

TEST_CASE("streams: after the first stream of a burst each proxy joins the next on the connection its last one "
          "ended on, without a TLS handshake",
          "[integration][streams]") {
    echo_server target;
    // One relay thread: which connection a proxy may take does not depend on the kernel's choice
    // of thread for a new connection (the next test has two).
    tunnel_fixture tunnel({.target_port = target.port(), .relay_args = {"--verbose", "--threads", "1"}});
    constexpr int streams = 4;
    for (int i = 0; i < streams; ++i) {
        const bytes data = random_bytes(64 * 1024 + i);
        unique_fd conn = connect_tcp(tunnel.local_port);
        transfer_result r = transfer(conn.get(), data, {.receive_exactly = data.size()});
        INFO("stream " << i << ": " << r.error);
        CHECK(r.ok());
        CHECK(r.received_sha256 == sha256_hex(data));
        conn.reset();
        wait_until([&] { return target.connections_open() == 0; }, k_connect_timeout);
        std::this_thread::sleep_for(std::chrono::milliseconds(300)); // well inside the 2 s they are kept
    }
    const std::string log = tunnel.relay.relay().stderr_text();
    INFO(tail(log, 4000));
    // The device's control connection; the first stream's POST (the service joins through it)
    // and the device's join; the spare each proxy opens after its first join. Nothing after:
    // each later stream's POST goes on the service proxy's spare (given back after each), and
    // both sides join on their connections of the stream before.
    CHECK(count_of(log, " resumed=") == 5);
    CHECK(count_of(log, " resumed=false") == 2);
    CHECK(count_of(log, "event=StreamEstablished") == streams);
    CHECK(count_of(log, "serviceJoin=new deviceJoin=new threads=1") == 1);
    CHECK(count_of(log, "serviceJoin=kept deviceJoin=kept threads=1") == streams - 1);
    // Connections a proxy no longer needs are closed after two seconds without a word in the
    // relay's log (the relay gives a kept one five).
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    const std::string later = tunnel.relay.relay().stderr_text();
    CHECK(count_of(later, " resumed=") == 5);
    CHECK(count_of(later, "event=BadRequest") == 0);
    CHECK(count_of(later, "kept stream connection ended") == 2);
    // Then the next stream starts afresh, and its connections resume the sessions (the cached
    // session is copied for each connection; one closed without close_notify made OpenSSL mark
    // the object it used not resumable, and cost the next one a full handshake).
    unique_fd next = open_echo_stream(tunnel.local_port);
    next.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::string after = tunnel.relay.relay().stderr_text();
    INFO(tail(after, 2000));
    CHECK(count_of(after, " resumed=false") == 2);
    CHECK(count_of(after, "serviceJoin=new deviceJoin=new") == 2);
    CHECK(tunnel.device_proxy->running());
    CHECK(tunnel.service_proxy->running());
}

TEST_CASE("streams: with two relay threads, 8 clients' streams join on kept connections of their own thread",
          "[integration][streams]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(),
                           .relay_args = {"--verbose", "--threads", "2", "--device-stream-rate", "100000",
                                          "--device-stream-burst", "100000"}});
    constexpr int clients = 8, per_client = 25;
    std::vector<std::string> errors(clients);
    std::vector<std::thread> threads;
    for (int c = 0; c < clients; ++c)
        threads.emplace_back([&, c] {
            for (int i = 0; i < per_client && errors[c].empty(); ++i) {
                const bytes data = random_bytes(1000 + 97 * i);
                unique_fd conn = connect_tcp(tunnel.local_port);
                transfer_result r = transfer(conn.get(), data, {.receive_exactly = data.size()});
                if (!r.ok() || r.received_sha256 != sha256_hex(data))
                    errors[c] = "stream " + std::to_string(i) + ": " + (r.ok() ? "wrong bytes" : r.error);
            }
        });
    for (auto& t : threads) t.join();
    for (int c = 0; c < clients; ++c) {
        INFO("client " << c << ": " << errors[c]);
        CHECK(errors[c].empty());
    }
    const bool all = wait_until([&] {
        return count_of(tunnel.relay.relay().stderr_text(), "event=StreamClosed") >= clients * per_client;
    }, k_connect_timeout);
    CHECK(all);
    const std::string log = tunnel.relay.relay().stderr_text();
    INFO(tail(log, 3000));
    const std::size_t established = count_of(log, "event=StreamEstablished");
    const std::size_t both_kept = count_of(log, "serviceJoin=kept deviceJoin=kept");
    CHECK(established == clients * per_client);
    // Every stream runs on one thread, kept connections or not (a proxy takes only a kept
    // connection of the stream's lane).
    CHECK(count_of(log, " threads=2") == 0);
    // Most streams need no new connection: per lane, a proxy soon holds as many kept ones as
    // streams run at once.
    CHECK(both_kept * 4 >= established * 3);
    CHECK(count_of(log, " resumed=") < established / 2);
    CHECK(count_of(log, "event=StreamClosed") == count_of(log, "result=ok"));
}

TEST_CASE("streams: a relay that keeps no stream connection (--keep-stream-connections false) gets a new "
          "connection for every stream, and the streams work as before",
          "[integration][streams]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(),
                           .relay_args = {"--verbose", "--keep-stream-connections", "false"}});
    constexpr int streams = 3;
    for (int i = 0; i < streams; ++i) {
        const bytes data = random_bytes(32 * 1024 + i);
        unique_fd conn = connect_tcp(tunnel.local_port);
        transfer_result r = transfer(conn.get(), data, {.receive_exactly = data.size()});
        INFO("stream " << i << ": " << r.error);
        CHECK(r.ok());
        CHECK(r.received_sha256 == sha256_hex(data));
        conn.reset();
        wait_until([&] { return target.connections_open() == 0; }, k_connect_timeout);
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const std::string log = tunnel.relay.relay().stderr_text();
    INFO(tail(log, 3000));
    CHECK(count_of(log, "serviceJoin=new deviceJoin=new") == streams);
    CHECK(count_of(log, "kept") == 0);
    CHECK(count_of(log, "result=ok") == streams);
}
