#include "harness.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <dirent.h>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <thread>

#include <openssl/rand.h>

#include <catch2/catch.hpp>

extern "C" char** environ;

namespace sgit {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Failure bookkeeping

namespace {
std::atomic<bool> g_test_failed{false};

bool env_set(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' && std::string_view(v) != "0";
}

[[noreturn]] void throw_errno(const std::string& what) {
    throw std::runtime_error(what + ": " + std::strerror(errno));
}

int remaining_ms(steady::time_point deadline) {
    auto left = std::chrono::duration_cast<millis>(deadline - steady::now()).count();
    return left < 0 ? 0 : static_cast<int>(left);
}
}  // namespace

namespace detail {
void set_test_failed(bool failed) { g_test_failed = failed; }
}  // namespace detail

bool current_test_failed() { return g_test_failed; }

// ---------------------------------------------------------------------------------------------
// Small utilities

bool wait_until(const std::function<bool()>& pred, millis timeout, millis poll) {
    const auto deadline = steady::now() + timeout;
    for (;;) {
        if (pred()) return true;
        if (steady::now() >= deadline) return false;
        std::this_thread::sleep_for(poll);
    }
}

std::vector<double> reconnect_delays(const std::string& log) {
    static const std::regex line(R"(reconnecting in ([0-9]+(?:\.[0-9]+)?)s)");
    std::vector<double> out;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), line); it != std::sregex_iterator(); ++it)
        out.push_back(std::stod((*it)[1]));
    return out;
}

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

std::size_t count_of(const std::string& haystack, const std::string& needle) {
    std::size_t n = 0;
    for (auto pos = haystack.find(needle); pos != std::string::npos;
         pos = haystack.find(needle, pos + needle.size()))
        ++n;
    return n;
}

std::string trim(std::string s) {
    const char* ws = " \t\r\n";
    s.erase(s.find_last_not_of(ws) + 1);
    s.erase(0, s.find_first_not_of(ws));
    return s;
}

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const fs::path& p, std::span<const unsigned char> data) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!out) throw std::runtime_error("cannot write " + p.string());
}

std::string tail(const std::string& s, std::size_t max_chars) {
    if (s.size() <= max_chars) return s;
    return "[... " + std::to_string(s.size() - max_chars) + " bytes cut ...]\n" +
           s.substr(s.size() - max_chars);
}

bytes random_bytes(std::size_t n) {
    bytes b(n);
    if (n > 0 && RAND_bytes(b.data(), static_cast<int>(n)) != 1)
        throw std::runtime_error("RAND_bytes failed");
    return b;
}

sha256::sha256() : ctx_(EVP_MD_CTX_new()) {
    if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("EVP_DigestInit_ex failed");
}

sha256::~sha256() { EVP_MD_CTX_free(ctx_); }

void sha256::update(const void* data, std::size_t n) { EVP_DigestUpdate(ctx_, data, n); }

std::string sha256::hex_digest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx_, md, &len);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 0xf];
    }
    return out;
}

std::string sha256_hex(std::span<const unsigned char> data) {
    sha256 h;
    h.update(data.data(), data.size());
    return h.hex_digest();
}

std::string sha256_hex(const std::string& data) {
    sha256 h;
    h.update(data.data(), data.size());
    return h.hex_digest();
}

std::string base64_encode(std::span<const unsigned char> data) {
    std::string out(4 * ((data.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(),
                            static_cast<int>(data.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

bytes base64_decode(const std::string& text) {
    bytes out(3 * (text.size() / 4) + 3);
    int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()),
                            static_cast<int>(text.size()));
    if (n < 0) throw std::runtime_error("invalid base64");
    std::size_t padding = 0;
    for (auto it = text.rbegin(); it != text.rend() && *it == '='; ++it) ++padding;
    out.resize(static_cast<std::size_t>(n) - padding);
    return out;
}

// ---------------------------------------------------------------------------------------------
// temp_dir

temp_dir::temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/sg-it-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw_errno("mkdtemp " + tmpl);
    path_ = tmpl;
}

temp_dir::~temp_dir() {
    if (env_set("SG_KEEP_TEST_DIRS")) {
        std::cerr << "[sg-it] kept test dir " << path_.string() << "\n";
        return;
    }
    std::error_code ec;
    fs::remove_all(path_, ec);
}

// ---------------------------------------------------------------------------------------------
// unique_fd, socket_pair

void unique_fd::reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
}

std::pair<unique_fd, unique_fd> socket_pair() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
    return {unique_fd(sv[0]), unique_fd(sv[1])};
}

// ---------------------------------------------------------------------------------------------
// Spawning

namespace {

std::vector<std::string> child_environment(const env_list& extra) {
    // The outbound proxy variables too: a developer's HTTPS_PROXY must not reroute the tests.
    static const std::vector<std::string> scrubbed = {
        "IOTHUB_CONNECTION_STRING", "STREAMING_TARGET_DEVICE", "PROXY_PORT", "HTTPS_PROXY",
        "https_proxy", "NO_PROXY", "no_proxy"};
    std::vector<std::string> out;
    for (char** e = environ; *e != nullptr; ++e) {
        std::string kv(*e);
        std::string name = kv.substr(0, kv.find('='));
        // STREAMGATE_<OPTION> sets any option of any binary: none from the developer's shell.
        bool drop = std::find(scrubbed.begin(), scrubbed.end(), name) != scrubbed.end() ||
                    name.starts_with("STREAMGATE_") || name.starts_with("IOTHUB_");
        for (const auto& [k, v] : extra) drop = drop || k == name;
        if (!drop) out.push_back(std::move(kv));
    }
    for (const auto& [k, v] : extra) out.push_back(k + "=" + v);
    return out;
}

std::string resolve_executable(const std::string& name) {
    if (name.find('/') != std::string::npos) return name;
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin");
    std::string dir;
    while (std::getline(dirs, dir, ':')) {
        std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
    return name;
}

// fork + exec with the child's fds 0, 1, 2 taken from in_fd, out_fd, err_fd. Throws if the exec
// fails (reported back through a close-on-exec pipe).
pid_t spawn_child(const std::vector<std::string>& argv, const env_list& env, int in_fd, int out_fd,
                  int err_fd) {
    if (argv.empty()) throw std::invalid_argument("spawn_child: empty argv");
    const std::string path = resolve_executable(argv[0]);
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    const std::vector<std::string> envs = child_environment(env);
    std::vector<char*> cenv;
    for (const auto& e : envs) cenv.push_back(const_cast<char*>(e.c_str()));
    cenv.push_back(nullptr);

    int errpipe[2];
    if (::pipe2(errpipe, O_CLOEXEC) != 0) throw_errno("pipe2");
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
        ::close(errpipe[0]);
        ::close(errpipe[1]);
        throw_errno("fork");
    }
    if (pid == 0) {
        // Child: only async-signal-safe calls from here on.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);
        ::dup2(in_fd, 0);
        ::dup2(out_fd, 1);
        ::dup2(err_fd, 2);
        struct sigaction sa {};
        sa.sa_handler = SIG_DFL;
        ::sigaction(SIGPIPE, &sa, nullptr);
        sigset_t none;
        ::sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execve(path.c_str(), cargv.data(), cenv.data());
        int e = errno;
        [[maybe_unused]] auto w = ::write(errpipe[1], &e, sizeof e);
        ::_exit(127);
    }
    ::close(errpipe[1]);
    int child_errno = 0;
    ssize_t n;
    do {
        n = ::read(errpipe[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    ::close(errpipe[0]);
    if (n == static_cast<ssize_t>(sizeof child_errno)) {
        ::waitpid(pid, nullptr, 0);
        throw std::runtime_error("cannot execute " + path + ": " + std::strerror(child_errno));
    }
    return pid;
}

int decode_status(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

std::string join_argv(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) {
        if (!s.empty()) s += ' ';
        s += a.find_first_of(" ;'\"") == std::string::npos ? a : "'" + a + "'";
    }
    return s;
}

unique_fd open_cloexec(const fs::path& p, int flags) {
    int fd = ::open(p.c_str(), flags | O_CLOEXEC, 0644);
    if (fd < 0) throw_errno("open " + p.string());
    return unique_fd(fd);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// process

process::process(std::string name, std::vector<std::string> argv, const fs::path& log_dir,
                 env_list env, int stdio_fd)
    : name_(std::move(name)), argv_(std::move(argv)) {
    // Unique log file names when several processes share a name.
    std::string base = name_;
    for (int i = 2; fs::exists(log_dir / (base + ".stderr")); ++i) base = name_ + "-" + std::to_string(i);
    stdout_path_ = log_dir / (base + ".stdout");
    stderr_path_ = log_dir / (base + ".stderr");

    unique_fd err = open_cloexec(stderr_path_, O_WRONLY | O_CREAT | O_TRUNC);
    if (stdio_fd >= 0) {
        pid_ = spawn_child(argv_, env, stdio_fd, stdio_fd, err.get());
    } else {
        unique_fd in = open_cloexec("/dev/null", O_RDONLY);
        unique_fd out = open_cloexec(stdout_path_, O_WRONLY | O_CREAT | O_TRUNC);
        pid_ = spawn_child(argv_, env, in.get(), out.get(), err.get());
    }
}

process::~process() {
    if (pid_ > 0 && !reap(false)) {
        ::kill(pid_, SIGKILL);
        reap(true);
    }
    if (current_test_failed() || std::uncaught_exceptions() > 0 || env_set("SG_TEST_PRINT_LOGS"))
        print_logs();
}

bool process::reap(bool block) {
    if (exit_code_) return true;
    int status = 0;
    pid_t r;
    do {
        r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) return false;
    exit_code_ = r == pid_ ? decode_status(status) : -1;
    return true;
}

bool process::running() { return !reap(false); }

void process::kill(int sig) {
    if (!reap(false)) ::kill(pid_, sig);
}

std::optional<int> process::wait_exit(millis timeout) {
    wait_until([this] { return reap(false); }, timeout, 10ms);
    return exit_code_;
}

std::string process::stdout_text() const { return read_file(stdout_path_); }
std::string process::stderr_text() const { return read_file(stderr_path_); }

std::string process::describe() {
    std::ostringstream s;
    s << name_ << " (pid " << pid_ << ", ";
    if (running()) s << "running";
    else s << "exited with " << *exit_code_;
    s << ", stderr in " << stderr_path_.string() << ")";
    return s.str();
}

void process::print_logs() {
    static std::mutex m;
    std::lock_guard lock(m);
    std::cerr << "\n===== [sg-it] " << name_ << " (pid " << pid_ << ", "
              << (exit_code_ ? "exit " + std::to_string(*exit_code_) : std::string("running"))
              << "): " << join_argv(argv_) << "\n";
    std::string out = stdout_text();
    if (!out.empty()) std::cerr << "----- stdout -----\n" << tail(out, 4000) << "\n";
    std::cerr << "----- stderr -----\n" << tail(stderr_text(), 12000) << "\n===== end of " << name_
              << " =====\n";
}

// ---------------------------------------------------------------------------------------------
// run

run_result run(const std::vector<std::string>& argv, const env_list& env, millis timeout) {
    int out_pipe[2], err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw_errno("pipe2");
    unique_fd out_r(out_pipe[0]), out_w(out_pipe[1]);
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) throw_errno("pipe2");
    unique_fd err_r(err_pipe[0]), err_w(err_pipe[1]);
    unique_fd in = open_cloexec("/dev/null", O_RDONLY);

    const pid_t pid = spawn_child(argv, env, in.get(), out_w.get(), err_w.get());
    out_w.reset();
    err_w.reset();

    run_result r;
    const auto deadline = steady::now() + timeout;
    std::string* sinks[2] = {&r.out, &r.err};
    unique_fd* fds[2] = {&out_r, &err_r};
    while ((*fds[0] || *fds[1]) && steady::now() < deadline) {
        pollfd p[2];
        for (int i = 0; i < 2; ++i) p[i] = {fds[i]->get(), POLLIN, 0};
        int n = ::poll(p, 2, remaining_ms(deadline));
        if (n < 0 && errno != EINTR) throw_errno("poll");
        for (int i = 0; i < 2; ++i) {
            if (p[i].fd < 0 || p[i].revents == 0) continue;
            char buf[8192];
            ssize_t got = ::read(p[i].fd, buf, sizeof buf);
            if (got > 0) sinks[i]->append(buf, static_cast<std::size_t>(got));
            else if (got == 0 || errno != EINTR) fds[i]->reset();
        }
    }
    int status = 0;
    bool exited = wait_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; },
                             std::chrono::duration_cast<millis>(deadline - steady::now()) + 10ms, 5ms);
    if (exited) {
        r.exit_code = decode_status(status);
    } else {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        r.err += "\n[sg-it] killed after a timeout of " + std::to_string(timeout.count()) + " ms";
    }
    return r;
}

std::string describe(const std::vector<std::string>& argv, const run_result& r) {
    std::ostringstream s;
    s << "$ " << join_argv(argv) << "\nexit: "
      << (r.exit_code ? std::to_string(*r.exit_code) : std::string("none (timed out)"))
      << "\n--- stdout ---\n" << tail(r.out, 4000) << "\n--- stderr ---\n" << tail(r.err, 4000);
    return s.str();
}

// ---------------------------------------------------------------------------------------------
// Networking

namespace {
sockaddr_in loopback(int port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int bound_port(int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) throw_errno("getsockname");
    return ntohs(a.sin_port);
}
}  // namespace

int free_port() {
    unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) throw_errno("socket");
    sockaddr_in a = loopback(0);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("bind");
    return bound_port(fd.get());
}

std::vector<tcp_row> read_tcp_tables(const std::string& proc_net) {
    std::vector<tcp_row> rows;
    for (const char* table : {"/tcp", "/tcp6"}) {
        std::ifstream in(proc_net + table);
        std::string line;
        std::getline(in, line);  // header
        while (std::getline(in, line)) {
            // "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode ..."
            std::istringstream f(line);
            std::string sl, tr, retr, uid, timeout;
            tcp_row r;
            f >> sl >> r.local >> r.remote >> r.state >> r.queues >> tr >> retr >> uid >> timeout >> r.inode;
            rows.push_back(std::move(r));
        }
    }
    return rows;
}

namespace {

int port_of(const std::string& address) {
    auto colon = address.rfind(':');
    return colon == std::string::npos ? -1 : std::stoi(address.substr(colon + 1), nullptr, 16);
}

bool listening_in_tables(const std::string& proc_net, int port) {
    for (const auto& r : read_tcp_tables(proc_net))
        if (r.state == "0A" && port_of(r.local) == port) return true;
    return false;
}

}  // namespace

bool port_listening(int port) { return listening_in_tables("/proc/net", port); }

bool port_listening_in(pid_t pid, int port) {
    return listening_in_tables("/proc/" + std::to_string(pid) + "/net", port);
}

bool wait_for_port(int port, millis timeout) {
    return wait_until([port] { return port_listening(port); }, timeout);
}

unique_fd connect_tcp(int port) {
    unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) throw_errno("socket");
    sockaddr_in a = loopback(port);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        throw_errno("connect 127.0.0.1:" + std::to_string(port));
    return fd;
}

std::string connect_result::describe() const {
    return (error == 0 ? std::string("connected") : std::string(std::strerror(error))) + " after " +
           std::to_string(elapsed.count()) + " ms";
}

connect_result try_connect(const std::string& ipv4, int port, millis timeout) {
    connect_result r;
    const auto started = steady::now();
    auto done = [&](int error) {
        r.error = error;
        r.elapsed = std::chrono::duration_cast<millis>(steady::now() - started);
        if (error != 0) r.fd.reset();
        return std::move(r);
    };
    r.fd = unique_fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!r.fd) return done(errno);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    if (::inet_pton(AF_INET, ipv4.c_str(), &a.sin_addr) != 1) return done(EINVAL);
    if (::connect(r.fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        if (errno != EINPROGRESS) return done(errno);
        const auto deadline = steady::now() + timeout;
        for (;;) {
            pollfd p{r.fd.get(), POLLOUT, 0};
            int n = ::poll(&p, 1, std::max(1, remaining_ms(deadline)));
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return done(errno);
            if (n == 0) return done(ETIMEDOUT);
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(r.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) return done(err);
            break;
        }
    }
    ::fcntl(r.fd.get(), F_SETFL, ::fcntl(r.fd.get(), F_GETFL) & ~O_NONBLOCK);
    return done(0);
}

closed_result wait_closed(int fd, millis timeout) {
    closed_result c;
    const auto started = steady::now();
    const auto deadline = started + timeout;
    std::vector<char> buf(64 * 1024);
    for (;;) {
        const int left = remaining_ms(deadline);
        if (left == 0) {
            c.how = "timed out";
            break;
        }
        pollfd p{fd, POLLIN, 0};
        int n = ::poll(&p, 1, std::min(left, 100));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        ssize_t got = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
        if (got > 0) {
            c.received += static_cast<std::size_t>(got);
            continue;
        }
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        c.closed = true;
        c.how = got == 0 ? std::string("EOF") : std::string("recv: ") + std::strerror(errno);
        break;
    }
    c.elapsed = std::chrono::duration_cast<millis>(steady::now() - started);
    return c;
}

std::size_t tcp_queued_bytes(const std::vector<int>& ports) {
    std::size_t total = 0;
    for (const auto& r : read_tcp_tables("/proc/net")) {
        if (r.state == "0A") continue;  // LISTEN: rx_queue is the accept backlog
        const int lp = port_of(r.local), rp = port_of(r.remote);
        if (std::find(ports.begin(), ports.end(), lp) == ports.end() &&
            std::find(ports.begin(), ports.end(), rp) == ports.end())
            continue;
        auto colon = r.queues.find(':');
        if (colon == std::string::npos) continue;
        total += std::stoul(r.queues.substr(0, colon), nullptr, 16) + std::stoul(r.queues.substr(colon + 1), nullptr, 16);
    }
    return total;
}

std::string describe_fds(pid_t pid) {
    const std::string base = "/proc/" + std::to_string(pid);
    // socket inode -> "local remote state" (hex, as in /proc/net/tcp)
    std::map<std::string, std::string> sockets;
    for (const auto& r : read_tcp_tables(base + "/net"))
        sockets[r.inode] = "tcp " + r.local + " -> " + r.remote + " st " + r.state;
    std::ostringstream out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(base + "/fd", ec)) {
        std::string target = fs::read_symlink(e.path(), ec).string();
        out << e.path().filename().string() << " -> " << target;
        if (target.rfind("socket:[", 0) == 0) {
            auto it = sockets.find(target.substr(8, target.size() - 9));
            if (it != sockets.end()) out << " " << it->second;
        }
        out << "\n";
    }
    return out.str();
}

std::optional<long> rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    }
    return std::nullopt;
}

int open_fd_count(pid_t pid) {
    const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return -1;
    int n = 0;
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    return n;
}

tcp_listener::tcp_listener() : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    if (!fd_) throw_errno("socket");
    int one = 1;
    ::setsockopt(fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a = loopback(0);
    if (::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw_errno("bind");
    if (::listen(fd_.get(), 64) != 0) throw_errno("listen");
    port_ = bound_port(fd_.get());
}

unique_fd tcp_listener::accept(millis timeout, std::stop_token stop) {
    const auto deadline = steady::now() + timeout;
    while (!stop.stop_requested()) {
        const int left = remaining_ms(deadline);
        pollfd p{fd_.get(), POLLIN, 0};
        int n = ::poll(&p, 1, std::min(left, 100));
        if (n > 0) return unique_fd(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
        if (left == 0) break;
    }
    return unique_fd();
}

transfer_result transfer(int fd, std::span<const unsigned char> out, const transfer_options& opt) {
    transfer_result r;
    const int old_flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, old_flags | O_NONBLOCK);
    const auto deadline = steady::now() + opt.timeout;
    sha256 hash;
    bool send_done = false;
    bool recv_done = opt.receive_exactly && *opt.receive_exactly == 0;
    auto finish_send = [&] {
        send_done = true;
        if (opt.shutdown_after_send) ::shutdown(fd, SHUT_WR);
    };
    if (out.empty()) finish_send();
    std::vector<unsigned char> buf(64 * 1024);
    while ((!send_done || !recv_done) && r.error.empty()) {
        if (opt.stop.stop_requested()) {
            r.error = "stopped";
            break;
        }
        const int left = remaining_ms(deadline);
        if (left == 0) {
            r.error = "timed out after " + std::to_string(opt.timeout.count()) + " ms";
            break;
        }
        pollfd p{fd, static_cast<short>((send_done ? 0 : POLLOUT) | (recv_done ? 0 : POLLIN)), 0};
        int n = ::poll(&p, 1, std::min(left, 100));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            r.error = std::string("poll: ") + std::strerror(errno);
            break;
        }
        if (n == 0) continue;
        if (!recv_done && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
            std::size_t want = buf.size();
            if (opt.receive_exactly) want = std::min(want, *opt.receive_exactly - r.received);
            ssize_t got = ::recv(fd, buf.data(), want, 0);
            if (got > 0) {
                hash.update(buf.data(), static_cast<std::size_t>(got));
                r.received += static_cast<std::size_t>(got);
                if (opt.receive_exactly && r.received == *opt.receive_exactly) recv_done = true;
            } else if (got == 0) {
                if (opt.receive_exactly) r.error = "connection closed early";
                recv_done = true;
            } else if (errno != EAGAIN && errno != EINTR) {
                r.error = std::string("recv: ") + std::strerror(errno);
            }
        }
        if (!send_done && r.error.empty() && (p.revents & (POLLOUT | POLLERR))) {
            std::size_t chunk = std::min<std::size_t>(out.size() - r.sent, 64 * 1024);
            ssize_t put = ::send(fd, out.data() + r.sent, chunk, MSG_NOSIGNAL);
            if (put > 0) {
                r.sent += static_cast<std::size_t>(put);
                if (r.sent == out.size()) finish_send();
            } else if (put < 0 && errno != EAGAIN && errno != EINTR) {
                r.error = std::string("send: ") + std::strerror(errno);
            }
        }
    }
    ::fcntl(fd, F_SETFL, old_flags);
    r.received_sha256 = hash.hex_digest();
    if (!r.error.empty()) {
        r.error += " (sent " + std::to_string(r.sent) + " of " + std::to_string(out.size()) +
                   " bytes, received " + std::to_string(r.received) +
                   (opt.receive_exactly ? " of " + std::to_string(*opt.receive_exactly) : std::string()) +
                   " bytes)";
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// echo_server

struct echo_server::impl {
    tcp_listener listener;
    std::atomic<bool> stop{false};
    std::atomic<int> accepted{0};
    std::atomic<int> open{0};
    struct connection {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
    };
    std::mutex m;
    std::vector<connection> connections;
    std::thread acceptor;

    void serve(unique_fd fd) {
        ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
        std::vector<char> buf(64 * 1024);
        while (!stop) {
            pollfd p{fd.get(), POLLIN, 0};
            if (::poll(&p, 1, 100) <= 0) continue;
            ssize_t got = ::recv(fd.get(), buf.data(), buf.size(), 0);
            if (got == 0) return;  // client done: close
            if (got < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                return;
            }
            std::size_t off = 0;
            while (off < static_cast<std::size_t>(got) && !stop) {
                pollfd w{fd.get(), POLLOUT, 0};
                if (::poll(&w, 1, 100) <= 0) continue;
                ssize_t put = ::send(fd.get(), buf.data() + off, static_cast<std::size_t>(got) - off,
                                     MSG_NOSIGNAL);
                if (put > 0) off += static_cast<std::size_t>(put);
                else if (errno != EAGAIN && errno != EINTR) return;
            }
        }
    }

    // Joins the threads of connections that are over (thousands of streams in one test).
    void reap_finished() {
        std::lock_guard lock(m);
        std::erase_if(connections, [](connection& c) {
            if (!c.done->load()) return false;
            c.thread.join();
            return true;
        });
    }

    impl() {
        acceptor = std::thread([this] {
            while (!stop) {
                unique_fd fd = listener.accept(100ms);
                reap_finished();
                if (!fd) continue;
                ++accepted;
                ++open;
                std::lock_guard lock(m);
                connection c;
                c.thread = std::thread([this, f = std::move(fd), done = c.done]() mutable {
                    serve(std::move(f));
                    --open;
                    *done = true;
                });
                connections.push_back(std::move(c));
            }
        });
    }

    ~impl() {
        stop = true;
        acceptor.join();
        for (auto& c : connections) c.thread.join();
    }
};

echo_server::echo_server() : impl_(std::make_unique<impl>()) {}
echo_server::~echo_server() = default;
int echo_server::port() const { return impl_->listener.port(); }
int echo_server::connections_accepted() const { return impl_->accepted; }
int echo_server::connections_open() const { return impl_->open; }

unique_fd open_echo_stream(int port, std::size_t probe) {
    unique_fd conn = connect_tcp(port);
    const bytes data = random_bytes(probe);
    transfer_result r = transfer(conn.get(), data, {.receive_exactly = probe, .timeout = k_connect_timeout});
    INFO("echo probe through port " << port << ": " << r.error);
    REQUIRE(r.ok());
    REQUIRE(r.received_sha256 == sha256_hex(data));
    return conn;
}

// ---------------------------------------------------------------------------------------------
// relay_fixture

relay_fixture::relay_fixture() : relay_fixture(relay_config{}) {}

relay_fixture::relay_fixture(relay_config config)
    : config_(std::move(config)), data_dir_(dir_ / "sg"), port_(free_port()) {
    // The data dir is not created here unless a CA is handed over: the relay's first start must create it.
    if (!config_.ca_from.empty()) {
        fs::create_directories(data_dir_);
        fs::permissions(data_dir_, fs::perms::owner_all, fs::perm_options::replace);
        for (const char* f : {"ca.pem", "ca.key"})
            fs::copy_file(config_.ca_from / f, data_dir_ / f);
        fs::permissions(data_dir_ / "ca.key", fs::perms::owner_read | fs::perms::owner_write,
                        fs::perm_options::replace);
    }
    start();
}

bool relay_fixture::listening() { return relay_->running() && port_listening_in(relay_->pid(), port_); }

void relay_fixture::start() {
    std::vector<std::string> argv = config_.prefix;
    argv.insert(argv.end(), {bin::relay, "--data-dir", data_dir_.string(), "--listen",
                             config_.listen_host + ":" + std::to_string(port_)});
    argv.insert(argv.end(), config_.args.begin(), config_.args.end());
    relay_ = spawn("relay", std::move(argv));
    // Ready = listening and its CA written (the relay may listen before it writes ca.pem).
    bool up = wait_until([&] { return !relay_->running() || (listening() && fs::exists(ca_file())); },
                         k_start_timeout);
    INFO(relay_->describe());
    REQUIRE(relay_->running());
    REQUIRE(listening());
    REQUIRE(fs::exists(ca_file()));
    REQUIRE(up);
}

std::optional<int> relay_fixture::stop(int sig, millis timeout) {
    relay_->kill(sig);
    return relay_->wait_exit(timeout);
}

run_result relay_fixture::admin(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {bin::relay, "--data-dir", data_dir_.string()};
    // Admin commands work on the relay's registry: a --registry URL among its options goes to them too.
    for (std::size_t i = 0; i + 1 < config_.args.size(); ++i)
        if (config_.args[i] == "--registry") argv.insert(argv.end(), {"--registry", config_.args[i + 1]});
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv);
}

std::string relay_fixture::create_device(const std::string& id) {
    std::vector<std::string> args = {"device-identity", "create", "--device-id", id};
    run_result r = admin(args);
    INFO(describe(args, r));
    REQUIRE(r.exit_code == 0);
    std::string cs = trim(r.out);
    CHECK(cs.find('\n') == std::string::npos);  // only the connection string on stdout
    REQUIRE(cs.rfind("HostName=", 0) == 0);
    REQUIRE(contains(cs, ";DeviceId=" + id + ";"));
    REQUIRE(contains(cs, ";SharedAccessKey="));
    CHECK(contains(cs, ":" + std::to_string(port_) + ";"));  // HostName carries the relay's port
    return cs;
}

std::string relay_fixture::service_connection_string() {
    std::vector<std::string> args = {"show-connection-string", "--policy-name", "service"};
    run_result r = admin(args);
    INFO(describe(args, r));
    REQUIRE(r.exit_code == 0);
    std::string cs = trim(r.out);
    CHECK(cs.find('\n') == std::string::npos);
    REQUIRE(cs.rfind("HostName=", 0) == 0);
    REQUIRE(contains(cs, ";SharedAccessKeyName=service;"));
    REQUIRE(contains(cs, ";SharedAccessKey="));
    return cs;
}

bool relay_fixture::device_connected(const std::string& id) {
    run_result r = admin({"device-identity", "show", "--device-id", id});
    static const std::regex connected(R"re("connectionState"\s*:\s*"Connected")re");
    return r.exit_code == 0 && std::regex_search(r.out, connected);
}

std::string relay_fixture::connection_state(const std::string& id) {
    run_result r = admin({"device-identity", "show", "--device-id", id});
    static const std::regex state(R"re("connectionState"\s*:\s*"([A-Za-z]*)")re");
    std::smatch m;
    if (r.exit_code != 0 || !std::regex_search(r.out, m, state)) return "";
    return m[1];
}

bool relay_fixture::wait_device_connected(const std::string& id, process& device_side,
                                          millis timeout) {
    bool connected = false;
    wait_until(
        [&] {
            connected = device_connected(id);
            return connected || !device_side.running() || !relay_->running();
        },
        timeout, 100ms);
    INFO(relay_->describe());
    CHECK(relay_->running());
    return connected;
}

std::unique_ptr<process> relay_fixture::spawn(const std::string& name, std::vector<std::string> argv,
                                              int stdio_fd) {
    return std::make_unique<process>(name, std::move(argv), dir_.path(), env_list{}, stdio_fd);
}

std::unique_ptr<process> spawn_stdio_service_proxy(relay_fixture& relay,
                                                   const std::string& service_connection_string,
                                                   const std::string& device_id, int fd,
                                                   const std::vector<std::string>& options) {
    std::vector<std::string> argv = {bin::service_proxy, "--ca-file", relay.ca_file().string()};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.insert(argv.end(), {"--stdio", service_connection_string, device_id});
    return relay.spawn("service-proxy-stdio", std::move(argv), fd);
}

std::string with_wrong_key(const std::string& connection_string) {
    static const std::regex key("SharedAccessKey=[^;]*");
    for (;;) {
        std::string wrong = std::regex_replace(
            connection_string, key, "SharedAccessKey=" + base64_encode(random_bytes(32)));
        if (wrong != connection_string) return wrong;
    }
}

// ---------------------------------------------------------------------------------------------
// sshd_fixture

sshd_fixture::sshd_fixture() : sshd_fixture(std::vector<std::string>{}) {}

sshd_fixture::sshd_fixture(std::vector<std::string> prefix)
    : port_(free_port()), host_key_(dir_ / "ssh_host_ed25519_key"), user_key_(dir_ / "id_ed25519") {
    const passwd* pw = ::getpwuid(::geteuid());
    REQUIRE(pw != nullptr);
    user_ = pw->pw_name;

    for (const auto& key : {host_key_, user_key_}) {
        std::vector<std::string> argv = {"ssh-keygen", "-q", "-t", "ed25519", "-N", "",
                                         "-C", "sg-it", "-f", key.string()};
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
    }
    const fs::path authorized_keys = dir_ / "authorized_keys";
    fs::copy_file(user_public_key(), authorized_keys);

    const fs::path config = dir_ / "sshd_config";
    {
        std::ofstream c(config);
        c << "ListenAddress 127.0.0.1\n"
          << "Port " << port_ << "\n"
          << "HostKey " << host_key_.string() << "\n"
          << "AuthorizedKeysFile " << authorized_keys.string() << "\n"
          << "PidFile " << (dir_ / "sshd.pid").string() << "\n"
          << "UsePAM no\n"
          << "StrictModes no\n"
          << "PasswordAuthentication no\n"
          << "KbdInteractiveAuthentication no\n"
          << "PubkeyAuthentication yes\n"
          << "PermitRootLogin yes\n"
          << "UseDNS no\n"
          << "PrintMotd no\n"
          << "LogLevel VERBOSE\n";
    }
    if (::geteuid() == 0) fs::create_directories("/run/sshd");  // privilege separation dir

    std::vector<std::string> argv = std::move(prefix);
    argv.insert(argv.end(), {"/usr/sbin/sshd", "-D", "-e", "-f", config.string()});
    sshd_ = std::make_unique<process>("sshd", std::move(argv), dir_.path());
    bool up = wait_until(
        [&] { return !sshd_->running() || port_listening_in(sshd_->pid(), port_); }, k_start_timeout);
    INFO(sshd_->describe());
    REQUIRE(up);
    REQUIRE(sshd_->running());
}

bytes sshd_fixture::host_key_blob() const {
    // "ssh-ed25519 AAAAC3Nza... comment"
    std::istringstream in(read_file(host_key_.string() + ".pub"));
    std::string type, b64;
    in >> type >> b64;
    return base64_decode(b64);
}

// ---------------------------------------------------------------------------------------------
// tunnel_fixture

tunnel_fixture::tunnel_fixture(const tunnel_options& opt) : relay(relay_config{.args = opt.relay_args}) {
    device_connection_string = relay.create_device(device_id);
    service_connection_string = relay.service_connection_string();

    device_proxy_argv = {bin::device_proxy, "--ca-file", relay.ca_file().string(),
                         device_connection_string, opt.target_host, std::to_string(opt.target_port)};
    device_proxy_argv.insert(device_proxy_argv.end(), opt.device_proxy_args.begin(),
                             opt.device_proxy_args.end());
    device_proxy = relay.spawn("device-proxy", device_proxy_argv);
    {
        bool connected = relay.wait_device_connected(device_id, *device_proxy);
        INFO(device_proxy->describe());
        REQUIRE(connected);
    }

    if (!opt.start_service_proxy) return;
    local_port = free_port();
    service_proxy_argv = {bin::service_proxy, "--ca-file", relay.ca_file().string()};
    service_proxy_argv.insert(service_proxy_argv.end(), opt.service_proxy_args.begin(),
                              opt.service_proxy_args.end());
    service_proxy_argv.insert(service_proxy_argv.end(),
                              {service_connection_string, device_id, std::to_string(local_port)});
    respawn_service_proxy();
}

void tunnel_fixture::respawn_device_proxy() {
    device_proxy = relay.spawn("device-proxy", device_proxy_argv);
}

void tunnel_fixture::respawn_service_proxy() {
    REQUIRE_FALSE(service_proxy_argv.empty());
    service_proxy = relay.spawn("service-proxy", service_proxy_argv);
    bool up = wait_until([&] { return !service_proxy->running() || port_listening(local_port); },
                         k_start_timeout);
    INFO(service_proxy->describe());
    REQUIRE(up);
    REQUIRE(service_proxy->running());
}

std::unique_ptr<process> tunnel_fixture::stdio_service_proxy(int fd,
                                                             const std::vector<std::string>& options) {
    return spawn_stdio_service_proxy(relay, service_connection_string, device_id, fd, options);
}

// ---------------------------------------------------------------------------------------------
// netns

namespace {
void run_checked(const std::vector<std::string>& argv) {
    run_result r = run(argv);
    if (r.exit_code != 0) throw std::runtime_error(describe(argv, r));
}
}  // namespace

netns::netns(std::string name) : name_(std::move(name)) {
    run_checked({"ip", "netns", "add", name_});
    try {
        ip({"link", "set", "lo", "up"});
    } catch (...) {
        run({"ip", "netns", "delete", name_});
        throw;
    }
}

netns::~netns() {
    run_result r = run({"ip", "netns", "delete", name_});
    if (r.exit_code != 0) std::cerr << "[sg-it] cannot delete netns " << name_ << ": " << r.err << "\n";
}

void netns::ip(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {"ip", "-n", name_};
    argv.insert(argv.end(), args.begin(), args.end());
    run_checked(argv);
}

void netns::run_inside(const std::function<void()>& fn) const {
    std::exception_ptr error;
    std::thread t([&] {
        try {
            unique_fd ns(::open(("/var/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC));
            if (!ns) throw_errno("open /var/run/netns/" + name_);
            if (::setns(ns.get(), CLONE_NEWNET) != 0) throw_errno("setns " + name_);
            fn();
        } catch (...) {
            error = std::current_exception();
        }
    });
    t.join();
    if (error) std::rethrow_exception(error);
}

// --- socket_history ---------------------------------------------------------------------------

namespace {

// "0100007F:1F90" (as in /proc/net/tcp) -> "127.0.0.1:8080"; IPv6 stays hex.
std::string readable_address(const std::string& hex) {
    auto colon = hex.find(':');
    if (colon != 8) return hex;
    unsigned long ip = std::stoul(hex.substr(0, 8), nullptr, 16);
    unsigned long port = std::stoul(hex.substr(9), nullptr, 16);
    std::ostringstream out;
    out << (ip & 0xff) << '.' << ((ip >> 8) & 0xff) << '.' << ((ip >> 16) & 0xff) << '.' << (ip >> 24) << ':' << port;
    return out.str();
}

}  // namespace

std::string utc_time_now() {
    auto now = std::chrono::system_clock::now();
    auto t = std::chrono::system_clock::to_time_t(now);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char text[32];
    std::snprintf(text, sizeof text, "%02d:%02d:%02d.%03lld", tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(ms));
    return text;
}

namespace {

std::vector<std::string> socket_inodes_of(pid_t pid) {
    std::vector<std::string> inodes;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
        std::string target = fs::read_symlink(e.path(), ec).string();
        if (target.rfind("socket:[", 0) == 0) inodes.push_back(target.substr(8, target.size() - 9));
    }
    return inodes;
}

// What a socket that is no TCP connection is: a line of /proc/PID/net/{udp,unix,netlink...}.
std::string other_socket_kind(pid_t pid, const std::string& inode) {
    for (const char* table : {"udp", "udp6", "unix", "netlink", "raw", "packet"}) {
        std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
        std::string line;
        while (std::getline(in, line)) {
            std::istringstream f(line);
            std::string field;
            while (f >> field)
                if (field == inode) return std::string(table) + " socket: " + line;
        }
    }
    return "not in the udp, unix or netlink tables either (a TCP socket never connected, or closed within 100 ms)";
}

}  // namespace

struct socket_history::impl {
    struct seen {
        std::string local, remote, first_state, last_state, first_seen, last_seen, owner;
    };
    owners_fn owners;
    std::mutex mutex;
    std::map<std::string, seen> by_inode;
    std::jthread poller;

    void poll_once() {
        const std::string now = utc_time_now();
        std::map<std::string, std::string> owner_of;
        for (auto& [name, pid] : owners())
            for (auto& inode : socket_inodes_of(pid)) owner_of[inode] = name + " (pid " + std::to_string(pid) + ")";
        const auto rows = read_tcp_tables("/proc/net");
        std::lock_guard lock(mutex);
        for (const auto& r : rows) {
            if (r.inode == "0" || r.state == "0A") continue;  // time-wait remains, listeners
            auto& s = by_inode[r.inode];
            if (s.first_seen.empty()) s = {readable_address(r.local), readable_address(r.remote), r.state, r.state, now, now, ""};
            s.last_state = r.state;
            s.last_seen = now;
            if (auto it = owner_of.find(r.inode); it != owner_of.end()) s.owner = it->second;
        }
    }
};

socket_history::socket_history(owners_fn owners) : impl_(std::make_unique<impl>()) {
    impl_->owners = std::move(owners);
    impl_->poller = std::jthread([s = impl_.get()](std::stop_token stop) {
        while (!stop.stop_requested()) {
            try {
                s->poll_once();
            } catch (const std::exception&) {  // a process went away mid-read: the next poll sees
            }
            std::this_thread::sleep_for(100ms);
        }
    });
}

socket_history::~socket_history() = default;

std::string socket_history::explain_closed_sockets(pid_t pid) {
    std::set<std::string> live;
    for (const auto& r : read_tcp_tables("/proc/net")) live.insert(r.inode);
    std::ostringstream out;
    std::lock_guard lock(impl_->mutex);
    for (auto& inode : socket_inodes_of(pid)) {
        if (live.count(inode)) continue;
        out << "socket:[" << inode << "] is no TCP connection any more; ";
        auto it = impl_->by_inode.find(inode);
        if (it == impl_->by_inode.end()) {
            out << "never seen as one; " << other_socket_kind(pid, inode) << "\n";
            continue;
        }
        auto& s = it->second;
        out << "local " << s.local << ", remote " << s.remote << ", state " << s.first_state << " at " << s.first_seen << ", "
            << s.last_state << " last seen at " << s.last_seen << " (states in hex as in /proc/net/tcp)";
        // The other end: the socket with the addresses swapped.
        for (auto& [other_inode, o] : impl_->by_inode)
            if (o.local == s.remote && o.remote == s.local)
                out << "; other end socket:[" << other_inode << "] of " << (o.owner.empty() ? "an unwatched process" : o.owner)
                    << ", first seen " << o.first_seen << ", last " << o.last_state << " at " << o.last_seen;
        out << "\n";
    }
    return out.str();
}

}  // namespace sgit
