// Bounded memory under backpressure, and no descriptor or memory leaks after many streams.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "harness.hpp"

using namespace sgit;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * KiB;

struct tunnel_processes {
    tunnel_fixture& t;
    std::vector<std::pair<std::string, process*>> all() {
        return {{"relay", &t.relay.relay()}, {"device-proxy", t.device_proxy.get()},
                {"service-proxy", t.service_proxy.get()}};
    }
};

// Waits until every process logged the end of `n` streams (so their buffers are released).
bool wait_streams_closed(tunnel_fixture& t, std::size_t n, millis timeout) {
    return wait_until(
        [&] {
            return count_of(t.relay.relay().stderr_text(), "event=StreamClosed") >= n &&
                   count_of(t.device_proxy->stderr_text(), " closed: sent=") >= n &&
                   count_of(t.service_proxy->stderr_text(), "Done streaming") >= n;
        },
        timeout, 100ms);
}

std::string kib(long v) { return std::to_string(v) + " KiB"; }

}  // namespace

// The bound, per process and per stream, from the design (docs/ARCHITECTURE.md, common/pump.hpp):
//   - the pump: one 64 KiB buffer per direction                          = 128 KiB
//   - Beast's write buffer (write_buffer_bytes = 64 KiB) per WebSocket   =  64 KiB (relay: 2 → 128)
//   - TLS per connection: OpenSSL's record buffers plus Asio's engine
//     buffers, about 4 × 17 KiB                                          ≈  70 KiB (relay: 2 → 140)
//   - coroutine frames, HTTP parser, WebSocket state                     ≈  a few tens of KiB
// The relay, with two WebSockets, needs the most: about 450 KiB. The bound we check is 1 MiB over
// the baseline (about 2x that, for allocator slack), in every process, while the sender pushes
// 64 MiB at a receiver that reads 1 MiB/s. Unbounded buffering would show tens of MiB.
constexpr long k_stream_bound_kib = 1024;

TEST_CASE("backpressure: a fast sender and a 1 MiB/s reader: every process stays within a fixed "
          "bound, the sender is slowed, memory returns to the baseline",
          "[integration][backpressure]") {
    constexpr std::size_t total = 64 * MiB;
    constexpr std::size_t rate = 1 * MiB;  // per second, at the target
    constexpr auto slow_phase = 6s;

    tcp_listener target;
    {   // Small kernel buffers at our own ends (the product's sockets keep the defaults), so what
        // the sender gets rid of is what the chain holds.
        int size = 64 * KiB;
        ::setsockopt(target.fd(), SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    tunnel_fixture tunnel({.target_port = target.port()});
    tunnel_processes procs{tunnel};

    std::atomic<std::size_t> target_received{0};
    std::atomic<bool> slow_started{false};
    std::string target_error;
    std::jthread server([&](std::stop_token stop) {
        // Connection 1: warm-up, read as fast as possible until EOF.
        {
            unique_fd conn = target.accept(k_transfer_timeout, stop);
            if (!conn) {
                target_error = "warm-up stream never reached the target";
                return;
            }
            transfer_result r = transfer(conn.get(), {}, {.timeout = k_transfer_timeout, .stop = stop});
            if (!r.ok()) target_error = "warm-up: " + r.error;
        }
        // Connection 2: read at `rate` bytes per second until EOF or stop.
        unique_fd conn = target.accept(k_transfer_timeout, stop);
        if (!conn) {
            target_error = "slow stream never reached the target";
            return;
        }
        slow_started = true;
        const auto started = steady::now();
        std::vector<char> buf(64 * KiB);
        while (!stop.stop_requested()) {
            const double elapsed = std::chrono::duration<double>(steady::now() - started).count();
            const auto allowed = static_cast<std::size_t>(elapsed * static_cast<double>(rate));
            if (target_received >= allowed) {
                std::this_thread::sleep_for(10ms);
                continue;
            }
            pollfd p{conn.get(), POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            ssize_t got = ::recv(conn.get(), buf.data(), std::min(buf.size(), allowed - target_received), MSG_DONTWAIT);
            if (got > 0) target_received += static_cast<std::size_t>(got);
            else if (got == 0 || (errno != EAGAIN && errno != EINTR)) break;
        }
    });

    // Warm-up: 8 MiB at full speed (allocator arenas, TLS, buffers all touched once).
    {
        unique_fd client = connect_tcp(tunnel.local_port);
        const bytes warm = random_bytes(8 * MiB);
        transfer_result r = transfer(client.get(), warm, {.shutdown_after_send = true, .timeout = k_transfer_timeout});
        INFO(r.error);
        REQUIRE(r.ok());
    }
    REQUIRE(wait_streams_closed(tunnel, 1, k_connect_timeout));
    std::map<std::string, long> baseline, peak, after;
    for (auto& [name, p] : procs.all()) {
        auto rss = rss_kib(p->pid());
        REQUIRE(rss.has_value());
        baseline[name] = peak[name] = *rss;
    }

    // The measured stream: the client pushes 64 MiB as fast as the chain takes it.
    const bytes payload = random_bytes(total);
    std::atomic<std::size_t> sent{0};
    std::string sender_error;
    unique_fd client = connect_tcp(tunnel.local_port);
    {
        int size = 64 * KiB;
        ::setsockopt(client.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    }
    std::jthread sender([&](std::stop_token stop) {
        ::fcntl(client.get(), F_SETFL, ::fcntl(client.get(), F_GETFL) | O_NONBLOCK);
        while (!stop.stop_requested() && sent < total) {
            pollfd p{client.get(), POLLOUT, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            ssize_t n = ::send(client.get(), payload.data() + sent.load(), std::min<std::size_t>(total - sent, 64 * KiB),
                               MSG_NOSIGNAL);
            if (n > 0) sent += static_cast<std::size_t>(n);
            else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                sender_error = std::strerror(errno);
                break;
            }
        }
    });

    REQUIRE(wait_until([&] { return slow_started.load(); }, k_connect_timeout));
    const auto slow_from = steady::now();
    // In user space = sent by the client - read by the target - held by the kernel in the four
    // TCP connections of the chain; the largest value seen while the sender is held back.
    const std::vector<int> chain_ports = {tunnel.local_port, tunnel.relay.port(), target.port()};
    long max_user_space = 0;
    int consistent_samples = 0;
    while (steady::now() - slow_from < slow_phase) {  // sampling, not waiting for a condition
        for (auto& [name, p] : procs.all())
            if (auto rss = rss_kib(p->pid())) peak[name] = std::max(peak[name], *rss);
        if (steady::now() - slow_from > 2s) {  // the chain is full by now
            const std::size_t s0 = sent, r0 = target_received;
            const std::size_t kernel = tcp_queued_bytes(chain_ports);
            const std::size_t s1 = sent;
            if (s0 == s1 && ++consistent_samples)  // sender blocked meanwhile: a consistent sample
                max_user_space = std::max(max_user_space, static_cast<long>(s0) - static_cast<long>(r0) -
                                                              static_cast<long>(kernel));
        }
        std::this_thread::sleep_for(50ms);
    }
    const std::size_t sent_then = sent, received_then = target_received;
    const double seconds = std::chrono::duration<double>(steady::now() - slow_from).count();

    sender.request_stop();
    sender.join();
    client.reset();  // abandons the rest: the stream is torn down
    server.request_stop();
    server.join();
    const bool all_closed = wait_streams_closed(tunnel, 2, k_connect_timeout);
    for (auto& [name, p] : procs.all())
        after[name] = rss_kib(p->pid()).value_or(-1);

    std::ostringstream report;
    report << "slow phase " << seconds << " s: sender sent " << sent_then / KiB << " KiB, target read "
           << received_then / KiB << " KiB, in flight " << (sent_then - received_then) / KiB
           << " KiB, of which at most " << max_user_space / static_cast<long>(KiB) << " KiB in the processes (" << consistent_samples << " samples)\n";
    for (auto& [name, p] : procs.all())
        report << name << ": baseline " << kib(baseline[name]) << ", peak +" << kib(peak[name] - baseline[name])
               << ", after +" << kib(after[name] - baseline[name]) << "\n";
    INFO(report.str());
    INFO("target: " << target_error << "; sender: " << sender_error);
    if (std::getenv("SG_TEST_REPORT")) WARN(report.str());

    CHECK(target_error.empty());
    CHECK(sender_error.empty());
    // The reader really was slow, and data flowed.
    CHECK(received_then >= 3 * MiB);
    CHECK(received_then <= static_cast<std::size_t>((seconds + 1) * rate));
    // The sender was held back: at full speed 64 MiB take well under a second. What it got rid
    // of is what the reader took plus what the chain holds: the kernel's socket buffers of the
    // four TCP connections on the way (loopback autotuning lets each grow to several MiB) and the
    // processes' fixed buffers. The latter, measured as the difference, stay within the bound:
    // in this direction each process holds at most one 64 KiB message in its pump plus what its
    // WebSocket/TLS layers are writing (under 200 KiB per process, 3 processes).
    CHECK(sent_then < total);
    CHECK(consistent_samples >= 5);
    CHECK(max_user_space <= k_stream_bound_kib * static_cast<long>(KiB));
    for (auto& [name, p] : procs.all()) {
        INFO(name);
        CHECK(peak[name] - baseline[name] <= k_stream_bound_kib);
        CHECK(after[name] - baseline[name] <= k_stream_bound_kib);
        CHECK(p->running());
    }
    CHECK(all_closed);
}

namespace {

// Runs `count` streams, `parallel` at a time: each sends a few random bytes, shuts down its write
// side, and must read them back followed by EOF. Returns the failures.
std::vector<std::string> run_short_streams(int port, int count, int parallel) {
    std::atomic<int> next{0};
    std::mutex m;
    std::vector<std::string> failures;
    {
        std::vector<std::jthread> workers;
        for (int w = 0; w < parallel; ++w) {
            workers.emplace_back([&] {
                for (int i = next++; i < count; i = next++) {
                    std::string error;
                    try {
                        unique_fd conn = connect_tcp(port);
                        const bytes data = random_bytes(16 + static_cast<std::size_t>(i % 97));
                        transfer_result r = transfer(conn.get(), data,
                                                     {.shutdown_after_send = true, .timeout = k_connect_timeout});
                        if (!r.ok()) error = r.error;
                        else if (r.received != data.size() || r.received_sha256 != sha256_hex(data))
                            error = "wrong echo";
                    } catch (const std::exception& e) {
                        error = e.what();
                    }
                    if (!error.empty()) {
                        std::lock_guard lock(m);
                        failures.push_back("stream " + std::to_string(i) + ": " + error);
                    }
                }
            });
        }
    }
    return failures;
}

struct usage {
    int fds = -1;
    long rss = -1;
};

usage usage_of(process& p) { return {open_fd_count(p.pid()), rss_kib(p.pid()).value_or(-1)}; }

}  // namespace

TEST_CASE("backpressure: after 2,000 streams the relay's descriptors are back to the baseline and its "
          "memory within a small margin",
          "[integration][backpressure][leaks]") {
    constexpr int warmup = 100, streams = 2000, parallel = 8;
    echo_server target;
    // The relay's per-device stream rate limit (429001 past 100 new streams/s by default) is
    // lifted: this test is about what 2,000 streams leave behind, not about throttling.
    tunnel_fixture tunnel({.target_port = target.port(),
                           .relay_args = {"--device-stream-rate", "100000", "--device-stream-burst", "100000"}});
    tunnel_processes procs{tunnel};

    auto quiet = [&](std::size_t total) {
        return wait_streams_closed(tunnel, total, k_transfer_timeout) &&
               wait_until([&] { return target.connections_open() == 0; }, k_connect_timeout);
    };

    {
        auto failures = run_short_streams(tunnel.local_port, warmup, parallel);
        INFO(failures.size() << " failed; first: " << (failures.empty() ? "" : failures.front()));
        REQUIRE(failures.empty());
    }
    REQUIRE(quiet(warmup));
    std::map<std::string, usage> baseline;
    for (auto& [name, p] : procs.all()) baseline[name] = usage_of(*p);

    const auto started = steady::now();
    auto failures = run_short_streams(tunnel.local_port, streams, parallel);
    const double seconds = std::chrono::duration<double>(steady::now() - started).count();
    {
        INFO(failures.size() << " of " << streams << " streams failed; first: "
                             << (failures.empty() ? "" : failures.front()));
        CHECK(failures.empty());
    }
    CHECK(quiet(warmup + streams));

    // Descriptors: exactly the baseline once the last connection is closed (bounded wait).
    std::map<std::string, usage> now;
    for (auto& [name, p] : procs.all()) {
        bool back = wait_until([&] { return open_fd_count(p->pid()) <= baseline[name].fds; }, 10s, 100ms);
        now[name] = usage_of(*p);
        INFO(name << ": fds " << baseline[name].fds << " -> " << now[name].fds);
        CHECK(back);
    }
    std::ostringstream report;
    report << streams << " streams in " << seconds << " s\n";
    for (auto& [name, p] : procs.all())
        report << name << ": fds " << baseline[name].fds << " -> " << now[name].fds << ", RSS "
               << kib(baseline[name].rss) << " -> " << kib(now[name].rss) << "\n";
    INFO(report.str());
    if (std::getenv("SG_TEST_REPORT")) WARN(report.str());
    // Memory: the baseline is taken after 100 warm-up streams, so the allocator's arenas and
    // caches already exist; 2,000 more may still move RSS a little (fragmentation), but a leak
    // of a single 4 KiB object per stream would already add 8 MiB. Margin: 4 MiB.
    for (auto& [name, p] : procs.all()) {
        INFO(name);
        CHECK(now[name].rss - baseline[name].rss <= 4096);
        CHECK(p->running());
    }
}
