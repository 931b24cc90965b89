// sg_device_swarm: many devices from one process, built on the client API the device proxy uses
// (sg::client::device_connection). Prints JSON objects, one per line, on stdout.
//
//   sg_device_swarm create  --connection-string "<policy with RegistryWrite>" --ca-file F
//                           --count N [--prefix swarm-] --key BASE64 [--parallel 8]
//       registers devices {prefix}0 .. {prefix}N-1 with the given symmetric key through the
//       relay's registry REST API (PUT /devices/{id}) on keep-alive connections; 409001 (already
//       there) counts as done, so a rerun on the same data directory is cheap.
//   sg_device_swarm connect --host-name HOST:PORT --ca-file F --count N [--prefix swarm-] --key BASE64
//                           [--parallel 256] [--threads 0] [--timeout 600]
//       opens every device's control connection (each signed with its own SAS token), with at
//       most `parallel` handshakes in flight, retrying a failed one up to 3 times; prints
//       {"event":"connected",...} when all are up, then holds them (answering pings, rejecting
//       stream requests) until SIGTERM/SIGINT and prints {"event":"released",...}.
//       Cluster options (bench/cluster.sh):
//         --relay HOST:PORT (repeatable) dial these nodes instead of --host-name (the token is
//             still for --host-name). Device i dials the first one first; its later attempts go
//             round its own order: the first, then the others rotated by i, so devices leaving
//             the first node spread evenly over the rest.
//         --reconnect 1  a lost connection is dialled again the way the device proxy does it
//             (device-proxy/device_proxy.cpp control_loop): wait a uniformly jittered 50-100 % of
//             the backoff (1 s, doubling after each failed attempt up to --max-backoff, default
//             60), then dial the next relay of the device's order; forever, until SIGTERM.
//         --events FILE  one line per reconnection: "index lost_unix_ms back_unix_ms relay attempts"
//             (relay: its position in the --relay list).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <vector>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/http.hpp>
#include "common/client.hpp"
#include "common/connection_string.hpp"
#include "common/crypto.hpp"
#include "common/sas_token.hpp"
#include "common/tls.hpp"

namespace {
using namespace sg;
namespace http = beast::http;
using clock_type = std::chrono::steady_clock;

struct options {
    std::string mode;
    std::string connection_string;
    std::string host_name;
    std::string ca_file;
    std::string prefix = "swarm-";
    std::string key;
    int count = 1000;
    int parallel = 0;
    unsigned threads = 0;
    int timeout_s = 600;
    std::vector<std::pair<std::string, std::uint16_t>> relays;
    bool reconnect = false;
    int max_backoff_s = 60;
    std::string events_file;
};

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

double percentile(std::vector<double> v, double p)
{
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

// Work shared by the coroutines of one run; every coroutine runs on its own strand, so the
// counters are atomics and the lists are behind a mutex.
struct shared_run {
    options opts;
    std::shared_ptr<asio::ssl::context> tls;
    asio::io_context* ioc = nullptr;
    std::atomic<int> next{0};
    std::atomic<int> done{0}, ok{0}, failed{0}, retries{0}, dropped{0}, reconnected{0}, reconnect_failures{0};
    std::FILE* events = nullptr;
    std::mutex mutex;
    std::vector<double> latency_ms;
    std::string first_error;
    std::vector<std::shared_ptr<client::device_connection>> connections;
    clock_type::time_point started = clock_type::now();

    void note_error(const std::string& e)
    {
        std::lock_guard lock(mutex);
        if (first_error.empty())
            first_error = e;
    }
};

std::string device_id(const options& o, int i) { return o.prefix + std::to_string(i); }

std::string json_escape(const std::string& s)
{
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\')
            out += '\\';
        if (static_cast<unsigned char>(c) >= 0x20)
            out += c;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
asio::awaitable<void> create_worker(std::shared_ptr<shared_run> run, connection_string policy)
{
    std::shared_ptr<tls_stream> stream;
    beast::flat_buffer buffer;
    std::int64_t expiry = static_cast<std::int64_t>(std::time(nullptr)) + 3600;
    std::string host_header = policy.host_name;
    for (;;) {
        int i = run->next.fetch_add(1);
        if (i >= run->opts.count)
            break;
        std::string id = device_id(run->opts, i);
        bool done = false;
        for (int attempt = 0; attempt < 3 && !done; ++attempt) {
            if (!stream) {
                auto connected = co_await client::connect_tls(*run->tls, policy.host(), policy.port(), std::chrono::seconds(30));
                auto& f = std::get<0>(connected);
                auto& s = std::get<1>(connected);
                if (f) {
                    run->note_error(f.describe());
                    continue;
                }
                stream = s;
            }
            http::request<http::string_body> req{http::verb::put, "/devices/" + url_encode(id), 11};
            req.set(http::field::host, host_header);
            req.set(http::field::authorization,
                    make_sas_token(policy.host_name, policy.shared_access_key, policy.shared_access_key_name, expiry));
            req.set(http::field::content_type, "application/json");
            req.keep_alive(true);
            req.body() = "{\"deviceId\":\"" + json_escape(id) +
                         "\",\"authentication\":{\"type\":\"sas\",\"symmetricKey\":{\"primaryKey\":\"" +
                         json_escape(run->opts.key) + "\",\"secondaryKey\":\"" + json_escape(run->opts.key) + "\"}}}";
            req.prepare_payload();
            auto [wec, wn] = co_await http::async_write(*stream, req, use_nothrow);
            http::response<http::string_body> res;
            error_code rec = wec;
            if (!wec) {
                auto [ec, rn] = co_await http::async_read(*stream, buffer, res, use_nothrow);
                rec = ec;
            }
            if (rec) {
                stream.reset(); // reconnect and retry
                buffer.clear();
                run->note_error("registry request: " + rec.message());
                continue;
            }
            if (res.result() == http::status::ok || res.result() == http::status::conflict)
                done = true;
            else
                run->note_error("PUT /devices/" + id + ": HTTP " + std::to_string(res.result_int()) + " " + res.body());
            if (!res.keep_alive())
                stream.reset();
            if (!done)
                break;
        }
        (done ? run->ok : run->failed)++;
    }
    if (stream) {
        auto [ec] = co_await stream->async_shutdown(use_nothrow);
        (void)ec;
    }
}

int run_create(const options& o)
{
    auto run = std::make_shared<shared_run>();
    run->opts = o;
    auto policy = parse_connection_string(o.connection_string);
    if (policy.is_device())
        throw config_error("create needs a policy connection string with RegistryWrite");
    run->tls = std::make_shared<asio::ssl::context>(
        make_client_tls_context(o.ca_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(o.ca_file)));
    asio::io_context ioc(1);
    int workers = o.parallel > 0 ? o.parallel : 8;
    for (int w = 0; w < workers; ++w)
        asio::co_spawn(asio::make_strand(ioc), create_worker(run, policy), asio::detached);
    ioc.run();
    double s = seconds_since(run->started);
    std::printf("{\"event\":\"created\",\"requested\":%d,\"ok\":%d,\"failed\":%d,\"seconds\":%.3f,\"per_second\":%.1f,"
                "\"first_error\":\"%s\"}\n",
                o.count, run->ok.load(), run->failed.load(), s, run->ok.load() / s, json_escape(run->first_error).c_str());
    return run->failed == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
std::int64_t unix_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Device i's n-th relay: the first, then the others rotated by i (see the header).
std::size_t relay_turn(const options& o, int i, std::size_t n)
{
    std::size_t k = o.relays.size();
    if (k <= 1 || n % k == 0)
        return 0;
    return 1 + (static_cast<std::size_t>(i) + n % k - 1) % (k - 1);
}

asio::awaitable<std::pair<failure, std::shared_ptr<client::device_connection>>>
dial(std::shared_ptr<shared_run> run, const connection_string& cs, int i, std::size_t n)
{
    if (run->opts.relays.empty())
        co_return co_await client::device_connection::connect(*run->tls, cs);
    const auto& r = run->opts.relays[relay_turn(run->opts, i, n)];
    co_return co_await client::device_connection::connect(*run->tls, cs, r.first, r.second);
}

asio::awaitable<void> hold(std::shared_ptr<shared_run> run, std::shared_ptr<client::device_connection> conn,
                           connection_string cs, int i, std::size_t turn)
{
    std::mt19937 random(std::random_device{}());
    asio::steady_timer sleep(co_await asio::this_coro::executor);
    for (;;) {
        std::function<void(client::incoming_stream_request)> on_request = [conn](client::incoming_stream_request req) {
            conn->reject(req, "swarm device");
        };
        auto lost = co_await conn->run(on_request);
        (void)lost;
        if (run->ioc->stopped())
            co_return;
        run->dropped++;
        if (!run->opts.reconnect)
            co_return;
        // As the device proxy: jittered backoff from 1 s, doubling per failed attempt; each
        // attempt dials the next relay.
        auto lost_at = unix_ms();
        auto backoff = std::chrono::seconds(1);
        int attempts = 0;
        for (;;) {
            auto jittered = std::chrono::milliseconds(
                std::uniform_int_distribution<long>(backoff.count() * 500, backoff.count() * 1000)(random));
            sleep.expires_after(jittered);
            co_await sleep.async_wait(use_nothrow);
            backoff = std::min(backoff * 2, std::chrono::seconds(std::max(1, run->opts.max_backoff_s)));
            ++turn;
            ++attempts;
            auto connected = co_await dial(run, cs, i, turn);
            auto& f = std::get<0>(connected);
            if (f) {
                run->reconnect_failures++;
                run->note_error(cs.device_id + " (reconnect): " + f.describe());
                continue;
            }
            conn = std::get<1>(connected);
            break;
        }
        run->reconnected++;
        run->dropped--;
        std::lock_guard lock(run->mutex);
        run->connections[static_cast<std::size_t>(i)] = conn;
        if (run->events) {
            std::fprintf(run->events, "%d %lld %lld %zu %d\n", i, static_cast<long long>(lost_at),
                         static_cast<long long>(unix_ms()), relay_turn(run->opts, i, turn), attempts);
            std::fflush(run->events);
        }
    }
}

asio::awaitable<void> connect_worker(std::shared_ptr<shared_run> run)
{
    for (;;) {
        int i = run->next.fetch_add(1);
        if (i >= run->opts.count)
            co_return;
        connection_string cs;
        cs.host_name = run->opts.host_name;
        cs.device_id = device_id(run->opts, i);
        cs.shared_access_key = run->opts.key;
        bool up = false;
        std::size_t turn = 0;
        for (int attempt = 0; attempt < 3 && !up; ++attempt) {
            if (attempt > 0)
                run->retries++;
            // Each device's connection gets a strand of its own, as in the device proxy.
            auto strand = asio::make_strand(*run->ioc);
            auto t0 = clock_type::now();
            auto connected = co_await asio::co_spawn(strand, dial(run, cs, i, turn), asio::use_awaitable);
            auto& f = std::get<0>(connected);
            auto& conn = std::get<1>(connected);
            if (f) {
                run->note_error(cs.device_id + ": " + f.describe());
                continue; // the first connection stays on the first relay (the benchmark's starting point)
            }
            up = true;
            {
                std::lock_guard lock(run->mutex);
                run->latency_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t0).count());
                run->connections[static_cast<std::size_t>(i)] = conn;
            }
            asio::co_spawn(strand, hold(run, conn, cs, i, turn), asio::detached);
        }
        (up ? run->ok : run->failed)++;
        run->done++;
    }
}

asio::awaitable<void> report_when_connected(std::shared_ptr<shared_run> run)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    double last_progress = 0;
    while (run->done < run->opts.count && seconds_since(run->started) < run->opts.timeout_s) {
        timer.expires_after(std::chrono::milliseconds(100));
        co_await timer.async_wait(use_nothrow);
        if (seconds_since(run->started) - last_progress >= 5) {
            last_progress = seconds_since(run->started);
            std::fprintf(stderr, "sg_device_swarm: %d/%d connected after %.0f s\n", run->ok.load(), run->opts.count,
                         last_progress);
        }
    }
    double s = seconds_since(run->started);
    std::vector<double> latency;
    std::string first_error;
    {
        std::lock_guard lock(run->mutex);
        latency = run->latency_ms;
        first_error = run->first_error;
    }
    std::printf("{\"event\":\"connected\",\"requested\":%d,\"connected\":%d,\"failed\":%d,\"retries\":%d,"
                "\"seconds\":%.3f,\"per_second\":%.1f,\"connect_p50_ms\":%.2f,\"connect_p99_ms\":%.2f,"
                "\"first_error\":\"%s\"}\n",
                run->opts.count, run->ok.load(), run->failed.load(), run->retries.load(), s, run->ok.load() / s,
                percentile(latency, 50), percentile(latency, 99), json_escape(first_error).c_str());
    std::fflush(stdout);
}

int run_connect(const options& o)
{
    auto run = std::make_shared<shared_run>();
    run->opts = o;
    run->connections.resize(static_cast<std::size_t>(std::max(0, o.count)));
    if (!o.events_file.empty()) {
        run->events = std::fopen(o.events_file.c_str(), "w");
        if (!run->events)
            throw config_error("cannot write " + o.events_file);
    }
    run->tls = std::make_shared<asio::ssl::context>(
        make_client_tls_context(o.ca_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(o.ca_file)));
    unsigned threads = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
    asio::io_context ioc(static_cast<int>(threads));
    run->ioc = &ioc;
    int workers = o.parallel > 0 ? o.parallel : 256;
    for (int w = 0; w < workers; ++w)
        asio::co_spawn(asio::make_strand(ioc), connect_worker(run), asio::detached);
    asio::co_spawn(asio::make_strand(ioc), report_when_connected(run), asio::detached);
    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](const error_code&, int) {
        std::printf("{\"event\":\"released\",\"still_connected\":%d,\"dropped\":%d,\"reconnected\":%d,"
                    "\"reconnect_failures\":%d}\n",
                    run->ok.load() - run->dropped.load(), run->dropped.load(), run->reconnected.load(),
                    run->reconnect_failures.load());
        std::fflush(stdout);
        ioc.stop();
    });
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t)
        pool.emplace_back([&ioc] { ioc.run(); });
    ioc.run();
    for (auto& t : pool)
        t.join();
    std::_Exit(0); // 10,000 connections need no orderly teardown: the relay sees them close
}

void raise_fd_limit()
{
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        ::setrlimit(RLIMIT_NOFILE, &r);
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2) {
        std::fprintf(stderr, "usage: sg_device_swarm create|connect [options] (see the source's header)\n");
        return 2;
    }
    options o;
    o.mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--connection-string")
            o.connection_string = v;
        else if (k == "--host-name")
            o.host_name = v;
        else if (k == "--ca-file")
            o.ca_file = v;
        else if (k == "--prefix")
            o.prefix = v;
        else if (k == "--key")
            o.key = v;
        else if (k == "--count")
            o.count = std::atoi(v.c_str());
        else if (k == "--parallel")
            o.parallel = std::atoi(v.c_str());
        else if (k == "--threads")
            o.threads = static_cast<unsigned>(std::atoi(v.c_str()));
        else if (k == "--timeout")
            o.timeout_s = std::atoi(v.c_str());
        else if (k == "--relay") {
            auto colon = v.rfind(':');
            if (colon == std::string::npos || colon == 0) {
                std::fprintf(stderr, "--relay expects HOST:PORT\n");
                return 2;
            }
            o.relays.emplace_back(v.substr(0, colon), static_cast<std::uint16_t>(std::atoi(v.c_str() + colon + 1)));
        } else if (k == "--reconnect")
            o.reconnect = v != "0";
        else if (k == "--max-backoff")
            o.max_backoff_s = std::atoi(v.c_str());
        else if (k == "--events")
            o.events_file = v;
        else {
            std::fprintf(stderr, "unknown option %s\n", k.c_str());
            return 2;
        }
    }
    raise_fd_limit();
    try {
        if (o.key.empty())
            throw config_error("--key is required");
        if (o.mode == "create")
            return run_create(o);
        if (o.mode == "connect") {
            if (o.host_name.empty())
                throw config_error("--host-name is required");
            return run_connect(o);
        }
        std::fprintf(stderr, "unknown mode %s\n", o.mode.c_str());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sg_device_swarm: %s\n", e.what());
        return 1;
    }
}
