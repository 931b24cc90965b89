// sg_bench_latency: round-trip and stream-setup latency over plain TCP sockets (no project code,
// so the tool measures the path, not itself). Prints one JSON object per run on stdout.
//
//   sg_bench_latency pingpong --port P [--host 127.0.0.1] [--size 64] [--count 10000] [--warmup 500]
//       one connection (TCP_NODELAY); send `size` bytes, wait until all `size` come back, repeat.
//   sg_bench_latency setup --port P [--host 127.0.0.1] [--count 300] [--warmup 10]
//       one at a time: connect, send 1 byte, wait for the echo, close. Measures connect() start
//       to the echoed byte (through a service proxy: a whole stream set up end to end).
#include <algorithm>
#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct options {
    std::string mode;
    std::string host = "127.0.0.1";
    int port = 0;
    int size = 64;
    int count = 0;
    int warmup = -1;
};

[[noreturn]] void die(const std::string& what)
{
    std::fprintf(stderr, "sg_bench_latency: %s%s%s\n", what.c_str(), errno ? ": " : "", errno ? std::strerror(errno) : "");
    std::exit(1);
}

int connect_to(const options& o)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    timeval tv{10, 0}; // a stuck stream fails the run instead of hanging it
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(o.port));
    if (::inet_pton(AF_INET, o.host.c_str(), &addr.sin_addr) != 1)
        die("bad IPv4 address " + o.host);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

bool write_all(int fd, const char* p, size_t n)
{
    while (n > 0) {
        ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return false;
        }
        p += w;
        n -= static_cast<size_t>(w);
    }
    return true;
}

bool read_all(int fd, char* p, size_t n)
{
    while (n > 0) {
        ssize_t r = ::recv(fd, p, n, 0);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            return false;
        }
        p += r;
        n -= static_cast<size_t>(r);
    }
    return true;
}

double percentile(std::vector<double>& sorted, double p)
{
    if (sorted.empty())
        return 0;
    size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)];
}

void print_stats(const char* mode, std::vector<double> us, int failures, double elapsed_s)
{
    std::sort(us.begin(), us.end());
    double sum = 0;
    for (double v : us)
        sum += v;
    std::printf("{\"mode\":\"%s\",\"count\":%zu,\"failures\":%d,\"elapsed_s\":%.3f,\"min_us\":%.1f,\"p50_us\":%.1f,"
                "\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f}\n",
                mode, us.size(), failures, elapsed_s, us.empty() ? 0 : us.front(), percentile(us, 50), percentile(us, 90),
                percentile(us, 99), percentile(us, 99.9), us.empty() ? 0 : us.back(),
                us.empty() ? 0 : sum / static_cast<double>(us.size()));
}

int run_pingpong(const options& o)
{
    int count = o.count > 0 ? o.count : 10000;
    int warmup = o.warmup >= 0 ? o.warmup : 500;
    int fd = connect_to(o);
    if (fd < 0)
        die("connect");
    std::vector<char> out(static_cast<size_t>(o.size), 'x'), in(static_cast<size_t>(o.size));
    std::vector<double> us;
    us.reserve(static_cast<size_t>(count));
    auto started = clock_type::now();
    for (int i = 0; i < warmup + count; ++i) {
        out[0] = static_cast<char>(i);
        auto t0 = clock_type::now();
        if (!write_all(fd, out.data(), out.size()) || !read_all(fd, in.data(), in.size()))
            die("round trip " + std::to_string(i) + " failed");
        auto t1 = clock_type::now();
        if (in[0] != out[0])
            die("echo returned other bytes");
        if (i >= warmup)
            us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    double elapsed = std::chrono::duration<double>(clock_type::now() - started).count();
    ::shutdown(fd, SHUT_WR);
    ::close(fd);
    print_stats("pingpong", std::move(us), 0, elapsed);
    return 0;
}

int run_setup(const options& o)
{
    int count = o.count > 0 ? o.count : 300;
    int warmup = o.warmup >= 0 ? o.warmup : 10;
    std::vector<double> us;
    int failures = 0;
    auto started = clock_type::now();
    for (int i = 0; i < warmup + count; ++i) {
        auto t0 = clock_type::now();
        int fd = connect_to(o);
        char c = 'a', r = 0;
        bool ok = fd >= 0 && write_all(fd, &c, 1) && read_all(fd, &r, 1) && r == c;
        auto t1 = clock_type::now();
        if (fd >= 0) {
            ::shutdown(fd, SHUT_WR);
            // Wait for the far side's end of stream, so streams do not pile up in the relay.
            while (ok && ::recv(fd, &r, 1, 0) > 0) {
            }
            ::close(fd);
        }
        if (i < warmup)
            continue;
        if (ok)
            us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
        else
            ++failures;
    }
    double elapsed = std::chrono::duration<double>(clock_type::now() - started).count();
    print_stats("setup", std::move(us), failures, elapsed);
    return failures == 0 ? 0 : 1;
}

} // namespace

int main(int argc, char** argv)
{
    options o;
    if (argc < 2) {
        std::fprintf(stderr, "usage: sg_bench_latency pingpong|setup --port P [--host H] [--size N] [--count N] [--warmup N]\n");
        return 2;
    }
    o.mode = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--host")
            o.host = v;
        else if (k == "--port")
            o.port = std::atoi(v.c_str());
        else if (k == "--size")
            o.size = std::max(1, std::atoi(v.c_str()));
        else if (k == "--count")
            o.count = std::atoi(v.c_str());
        else if (k == "--warmup")
            o.warmup = std::atoi(v.c_str());
        else {
            std::fprintf(stderr, "unknown option %s\n", k.c_str());
            return 2;
        }
    }
    if (o.port <= 0)
        die("--port is required");
    if (o.mode == "pingpong")
        return run_pingpong(o);
    if (o.mode == "setup")
        return run_setup(o);
    std::fprintf(stderr, "unknown mode %s\n", o.mode.c_str());
    return 2;
}
