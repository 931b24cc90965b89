// sg_bench_tcp: the plain-TCP ends of the benchmark (no project code). Every mode prints JSON
// objects, one per line, on stdout.
//
//   echo   --port P                         epoll echo server for any number of connections
//   rate   --port P --clients 8 (--duration S | --streams N)
//          each client in a loop: connect, send 1 byte, read the echo, half-close, wait for the
//          far side's end, close. Counts complete streams per second and their setup latency;
//          with --streams, N streams in all (shared by the clients) instead of S seconds.
//   hold   --port P --count N [--parallel 64] [--timeout 300]
//          opens N connections (at most `parallel` being set up at once), each proven end to end
//          by one echoed byte; prints {"event":"established",...}, then holds them until
//          SIGTERM/SIGINT and prints {"event":"released",...} with how many the far side dropped.
//   sink   (--listen P | --port P) [--rate BYTES_PER_S] [--duration S]
//          reads a connection for `duration` seconds (or to its end), at most `rate` bytes per
//          second (0 = as fast as possible); with --listen, every connection it accepts.
//   source (--listen P | --port P) [--duration S]
//          writes 64 KiB chunks to a connection as fast as it can for `duration` seconds (or
//          until the reader goes away); with --listen, to every connection it accepts.
// --host H (default 127.0.0.1) is the address to connect to or to listen on.
#include <algorithm>
#include <arpa/inet.h>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <mutex>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
std::atomic<bool> stop_requested{false};

struct options {
    std::string mode;
    std::string host = "127.0.0.1";
    int port = 0;
    bool listen = false;
    int clients = 8;
    int count = 1000;
    int parallel = 64;
    double duration = 10;
    double timeout = 300;
    double rate = 0;
    long streams = 0; // rate: total across clients, 0 = run for `duration`
};

[[noreturn]] void die(const std::string& what)
{
    std::fprintf(stderr, "sg_bench_tcp: %s%s%s\n", what.c_str(), errno ? ": " : "", errno ? std::strerror(errno) : "");
    std::exit(1);
}

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

sockaddr_in address_of(const options& o)
{
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(o.port));
    if (::inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1)
        die("bad IPv4 address " + o.host);
    return addr;
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

void set_nodelay(int fd)
{
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int listen_on(const options& o)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    auto addr = address_of(o);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        die("bind " + o.host + ":" + std::to_string(o.port));
    if (::listen(fd, 4096) != 0)
        die("listen");
    return fd;
}

// A blocking connection with timeouts, so a stuck stream fails the run instead of hanging it.
int connect_blocking(const options& o, int timeout_s = 10)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    set_nodelay(fd);
    timeval tv{timeout_s, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    auto addr = address_of(o);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

// The connections of sink/source: with --port, one connection to it; with --listen, every
// connection accepted until stopped, each served on a thread of its own (so a short warm-up
// stream can come before the measured one). `serve` gets a connected socket.
template <class Serve>
int for_each_connection(const options& o, Serve serve)
{
    if (!o.listen) {
        int fd = connect_blocking(o, 60);
        if (fd < 0)
            die("connect");
        serve(fd);
        return 0;
    }
    int l = listen_on(o);
    std::printf("{\"event\":\"listening\",\"port\":%d}\n", o.port);
    std::fflush(stdout);
    while (!stop_requested) {
        pollfd p{l, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0)
            continue;
        int fd = ::accept(l, nullptr, nullptr);
        if (fd < 0)
            continue;
        set_nodelay(fd);
        std::thread([fd, serve] { serve(fd); }).detach();
    }
    return 0;
}

std::mutex print_mutex;

double percentile(std::vector<double> v, double p)
{
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

// ---------------------------------------------------------------------------------------------
int run_echo(const options& o)
{
    struct conn {
        std::string pending; // bytes read but not yet written back
        bool eof = false;
    };
    int l = listen_on(o);
    set_nonblocking(l);
    int ep = ::epoll_create1(0);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = l;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    std::unordered_map<int, conn> conns;
    std::vector<char> buffer(64 * 1024);
    std::vector<epoll_event> events(1024);
    std::printf("{\"event\":\"listening\",\"port\":%d}\n", o.port);
    std::fflush(stdout);
    auto close_conn = [&](int fd) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
        conns.erase(fd);
    };
    auto watch = [&](int fd, uint32_t what) {
        epoll_event e{};
        e.events = what;
        e.data.fd = fd;
        ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
    };
    while (!stop_requested) {
        int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 500);
        for (int i = 0; i < n; ++i) {
            int fd = events[static_cast<size_t>(i)].data.fd;
            if (fd == l) {
                for (;;) {
                    int c = ::accept4(l, nullptr, nullptr, SOCK_NONBLOCK);
                    if (c < 0)
                        break;
                    set_nodelay(c);
                    conns[c];
                    epoll_event e{};
                    e.events = EPOLLIN;
                    e.data.fd = c;
                    ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            auto it = conns.find(fd);
            if (it == conns.end())
                continue;
            conn& c = it->second;
            if (!c.pending.empty()) { // writable again
                ssize_t w = ::send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN) {
                    close_conn(fd);
                    continue;
                }
                if (w > 0)
                    c.pending.erase(0, static_cast<size_t>(w));
                if (c.pending.empty()) {
                    if (c.eof)
                        close_conn(fd);
                    else
                        watch(fd, EPOLLIN);
                }
                continue;
            }
            ssize_t r = ::recv(fd, buffer.data(), buffer.size(), 0);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                close_conn(fd); // end of stream (our FIN follows) or error
                continue;
            }
            if (r < 0)
                continue;
            ssize_t w = ::send(fd, buffer.data(), static_cast<size_t>(r), MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) {
                close_conn(fd);
                continue;
            }
            if (w < r) {
                c.pending.assign(buffer.data() + std::max<ssize_t>(w, 0), static_cast<size_t>(r - std::max<ssize_t>(w, 0)));
                watch(fd, EPOLLOUT);
            }
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// One stream end to end: connect, one byte there and back, half-close, wait for the far end.
bool one_stream(const options& o, double& setup_us)
{
    auto t0 = clock_type::now();
    int fd = connect_blocking(o);
    if (fd < 0)
        return false;
    char c = 's', r = 0;
    bool ok = ::send(fd, &c, 1, MSG_NOSIGNAL) == 1 && ::recv(fd, &r, 1, 0) == 1 && r == c;
    setup_us = std::chrono::duration<double, std::micro>(clock_type::now() - t0).count();
    if (ok) {
        ::shutdown(fd, SHUT_WR);
        while (::recv(fd, &r, 1, 0) > 0) {
        }
    }
    ::close(fd);
    return ok;
}

int run_rate(const options& o)
{
    std::mutex mutex;
    std::vector<double> setup;
    long ok = 0, failed = 0;
    auto started = clock_type::now();
    auto deadline = o.streams > 0 ? clock_type::time_point::max()
                                  : started + std::chrono::duration_cast<clock_type::duration>(
                                                  std::chrono::duration<double>(o.duration));
    std::atomic<long> taken{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < o.clients; ++t)
        threads.emplace_back([&] {
            std::vector<double> mine;
            long my_ok = 0, my_failed = 0;
            while (clock_type::now() < deadline && !stop_requested && (o.streams == 0 || taken++ < o.streams)) {
                double us = 0;
                if (one_stream(o, us)) {
                    ++my_ok;
                    mine.push_back(us);
                } else {
                    ++my_failed;
                }
            }
            std::lock_guard lock(mutex);
            ok += my_ok;
            failed += my_failed;
            setup.insert(setup.end(), mine.begin(), mine.end());
        });
    for (auto& t : threads)
        t.join();
    double elapsed = seconds_since(started);
    std::printf("{\"mode\":\"rate\",\"clients\":%d,\"streams\":%ld,\"failures\":%ld,\"elapsed_s\":%.3f,"
                "\"streams_per_s\":%.1f,\"setup_p50_us\":%.1f,\"setup_p99_us\":%.1f}\n",
                o.clients, ok, failed, elapsed, static_cast<double>(ok) / elapsed, percentile(setup, 50),
                percentile(setup, 99));
    return 0;
}

// ---------------------------------------------------------------------------------------------
int run_hold(const options& o)
{
    enum class state { connecting, waiting_echo, established };
    struct conn {
        state s;
        clock_type::time_point started;
    };
    int ep = ::epoll_create1(0);
    std::unordered_map<int, conn> conns;
    std::vector<epoll_event> events(1024);
    std::vector<double> setup;
    long launched = 0, established = 0, failed = 0, dropped = 0, inflight = 0;
    auto addr = address_of(o);
    auto started = clock_type::now();
    bool reported = false;
    auto finish = [&](int fd, bool ok) {
        ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
        ::close(fd);
        conns.erase(fd);
        if (!ok)
            ++failed;
        --inflight;
    };
    while (!stop_requested) {
        while (launched < o.count && inflight < o.parallel && seconds_since(started) < o.timeout) {
            int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            if (fd < 0)
                die("socket (raise ulimit -n)");
            set_nodelay(fd);
            ++launched;
            ++inflight;
            int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
            if (rc != 0 && errno != EINPROGRESS) {
                ::close(fd);
                ++failed;
                --inflight;
                continue;
            }
            conns[fd] = conn{state::connecting, clock_type::now()};
            epoll_event e{};
            e.events = EPOLLOUT;
            e.data.fd = fd;
            ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
        }
        if (!reported && (established + failed == o.count || (inflight == 0 && launched < o.count) ||
                          seconds_since(started) >= o.timeout)) {
            reported = true;
            std::printf("{\"event\":\"established\",\"requested\":%d,\"established\":%ld,\"failed\":%ld,"
                        "\"pending\":%ld,\"seconds\":%.3f,\"setup_p50_us\":%.1f,\"setup_p99_us\":%.1f}\n",
                        o.count, established, failed, inflight, seconds_since(started), percentile(setup, 50),
                        percentile(setup, 99));
            std::fflush(stdout);
        }
        int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 200);
        for (int i = 0; i < n; ++i) {
            int fd = events[static_cast<size_t>(i)].data.fd;
            auto it = conns.find(fd);
            if (it == conns.end())
                continue;
            conn& c = it->second;
            if (c.s == state::connecting) {
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                char b = 'h';
                if (err != 0 || ::send(fd, &b, 1, MSG_NOSIGNAL) != 1) {
                    finish(fd, false);
                    continue;
                }
                c.s = state::waiting_echo;
                epoll_event e{};
                e.events = EPOLLIN;
                e.data.fd = fd;
                ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
                continue;
            }
            char b = 0;
            ssize_t r = ::recv(fd, &b, 1, 0);
            if (r < 0 && errno == EAGAIN)
                continue;
            if (c.s == state::waiting_echo) {
                if (r != 1) {
                    finish(fd, false);
                    continue;
                }
                c.s = state::established;
                ++established;
                --inflight;
                setup.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - c.started).count());
                continue;
            }
            if (r <= 0) { // an established stream ended while we held it
                ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
                ::close(fd);
                conns.erase(fd);
                ++dropped;
                --established;
            }
        }
    }
    std::printf("{\"event\":\"released\",\"still_open\":%ld,\"dropped\":%ld}\n", established, dropped);
    std::fflush(stdout);
    return 0;
}

// ---------------------------------------------------------------------------------------------
int run_sink(const options& o)
{
    return for_each_connection(o, [o](int fd) {
        std::vector<char> buffer(64 * 1024);
        std::uint64_t total = 0;
        auto started = clock_type::now();
        while (!stop_requested && seconds_since(started) < o.duration) {
            size_t want = buffer.size();
            if (o.rate > 0) {
                // Pace: never ahead of rate * elapsed; read in pieces of at most 16 KiB.
                double allowed = o.rate * seconds_since(started) - static_cast<double>(total);
                if (allowed < 1) {
                    ::usleep(2000);
                    continue;
                }
                want = std::min<size_t>({want, 16 * 1024, static_cast<size_t>(allowed)});
            }
            pollfd p{fd, POLLIN, 0};
            if (::poll(&p, 1, 200) <= 0)
                continue;
            ssize_t r = ::recv(fd, buffer.data(), want, 0);
            if (r <= 0)
                break;
            total += static_cast<std::uint64_t>(r);
        }
        double elapsed = seconds_since(started);
        ::close(fd);
        std::lock_guard lock(print_mutex);
        std::printf("{\"mode\":\"sink\",\"bytes\":%llu,\"seconds\":%.3f,\"bytes_per_s\":%.0f}\n",
                    static_cast<unsigned long long>(total), elapsed, static_cast<double>(total) / elapsed);
        std::fflush(stdout);
    });
}

int run_source(const options& o)
{
    return for_each_connection(o, [o](int fd) {
        set_nonblocking(fd);
        std::vector<char> buffer(64 * 1024, 'z');
        std::uint64_t total = 0;
        auto started = clock_type::now();
        bool broken = false;
        while (!stop_requested && seconds_since(started) < o.duration) {
            pollfd p{fd, POLLOUT, 0};
            if (::poll(&p, 1, 200) <= 0)
                continue;
            ssize_t w = ::send(fd, buffer.data(), buffer.size(), MSG_NOSIGNAL);
            if (w < 0 && errno == EAGAIN)
                continue;
            if (w <= 0) {
                broken = true;
                break;
            }
            total += static_cast<std::uint64_t>(w);
        }
        double elapsed = seconds_since(started);
        ::close(fd);
        std::lock_guard lock(print_mutex);
        std::printf("{\"mode\":\"source\",\"bytes\":%llu,\"seconds\":%.3f,\"bytes_per_s\":%.0f,\"broken\":%s}\n",
                    static_cast<unsigned long long>(total), elapsed, static_cast<double>(total) / elapsed,
                    broken ? "true" : "false");
        std::fflush(stdout);
    });
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
        std::fprintf(stderr, "usage: sg_bench_tcp echo|rate|hold|sink|source [options] (see the source's header)\n");
        return 2;
    }
    options o;
    o.mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--host")
            o.host = v;
        else if (k == "--port")
            o.port = std::atoi(v.c_str());
        else if (k == "--listen") {
            o.port = std::atoi(v.c_str());
            o.listen = true;
        } else if (k == "--clients")
            o.clients = std::max(1, std::atoi(v.c_str()));
        else if (k == "--count")
            o.count = std::atoi(v.c_str());
        else if (k == "--parallel")
            o.parallel = std::max(1, std::atoi(v.c_str()));
        else if (k == "--duration")
            o.duration = std::atof(v.c_str());
        else if (k == "--timeout")
            o.timeout = std::atof(v.c_str());
        else if (k == "--streams")
            o.streams = std::atol(v.c_str());
        else if (k == "--rate")
            o.rate = std::atof(v.c_str());
        else {
            std::fprintf(stderr, "unknown option %s\n", k.c_str());
            return 2;
        }
    }
    if (o.port <= 0)
        die("--port or --listen is required");
    raise_fd_limit();
    std::signal(SIGPIPE, SIG_IGN);
    struct sigaction sa{};
    sa.sa_handler = [](int) { stop_requested = true; };
    ::sigaction(SIGTERM, &sa, nullptr);
    ::sigaction(SIGINT, &sa, nullptr);
    if (o.mode == "echo")
        return run_echo(o);
    if (o.mode == "rate")
        return run_rate(o);
    if (o.mode == "hold")
        return run_hold(o);
    if (o.mode == "sink")
        return run_sink(o);
    if (o.mode == "source")
        return run_source(o);
    std::fprintf(stderr, "unknown mode %s\n", o.mode.c_str());
    return 2;
}
