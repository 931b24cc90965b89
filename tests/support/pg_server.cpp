#include "pg_server.hpp"

#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <openssl/rand.h>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace sgtest {

namespace {

std::string read_text(const fs::path& p)
{
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string random_hex(std::size_t bytes)
{
    std::vector<unsigned char> raw(bytes);
    if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1)
        throw std::runtime_error("pg_server: RAND_bytes failed");
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : raw) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

int free_port()
{
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        throw std::runtime_error(std::string("pg_server: no free port: ") + std::strerror(errno));
    ::close(fd);
    return ntohs(a.sin_port);
}

// The postgres account when we are root (initdb and postgres refuse to run as root).
struct account {
    bool switch_user = false;
    uid_t uid = 0;
    gid_t gid = 0;
};

account postgres_account()
{
    account a;
    if (::geteuid() != 0)
        return a;
    const passwd* pw = ::getpwnam("postgres");
    if (!pw)
        throw std::runtime_error("pg_server: running as root needs the postgres user (apt-get install postgresql-15)");
    a.switch_user = true;
    a.uid = pw->pw_uid;
    a.gid = pw->pw_gid;
    return a;
}

// Starts argv with stdout+stderr appended to `out`, as the postgres user when root, dying with us.
pid_t spawn(const std::vector<std::string>& argv, const fs::path& out, const account& as)
{
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0)
        throw std::runtime_error(std::string("pg_server: fork: ") + std::strerror(errno));
    if (pid > 0)
        return pid;
    if (as.switch_user && (::setgroups(0, nullptr) != 0 || ::setgid(as.gid) != 0 || ::setuid(as.uid) != 0))
        ::_exit(126);
    // After setuid: a credential change clears the parent-death signal.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent)
        ::_exit(126);
    int null = ::open("/dev/null", O_RDONLY);
    int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (null < 0 || fd < 0)
        ::_exit(126);
    ::dup2(null, 0);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    // The postgres user may not enter the test's working directory (a checkout under a 0700
    // mktemp dir): psql would print that warning into the output the tests compare.
    if (::chdir("/") != 0)
        ::_exit(126);
    std::vector<char*> args;
    for (const auto& a : argv)
        args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
}

// Runs argv to completion (at most `timeout`); its exit code and output.
std::pair<int, std::string> run(const std::vector<std::string>& argv, const fs::path& dir, const account& as,
                                std::chrono::milliseconds timeout = 60s)
{
    static std::atomic<int> counter{0};
    fs::path out = dir / ("cmd-" + std::to_string(counter++) + ".out");
    pid_t pid = spawn(argv, out, as);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return {-1, read_text(out) + "\n(killed after the timeout)"};
        }
        std::this_thread::sleep_for(10ms);
    }
    std::string text = read_text(out);
    fs::remove(out);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), text};
}

std::string describe(const std::vector<std::string>& argv)
{
    std::string s;
    for (const auto& a : argv)
        s += (s.empty() ? "" : " ") + a;
    return s;
}

std::string sql_literal(const std::string& s)
{
    std::string out = "'";
    for (char c : s)
        out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
}

} // namespace

pg_server::pg_server()
{
    const char* bin = std::getenv("SG_PG_BIN");
    bin_ = bin && *bin ? bin : "/usr/lib/postgresql/15/bin";
    if (!fs::exists(fs::path(bin_) / "postgres"))
        throw std::runtime_error("pg_server: no " + bin_ + "/postgres (scripts/install-deps.sh installs postgresql-15)");
    char tmpl[] = "/tmp/sg-pg-XXXXXX";
    if (!::mkdtemp(tmpl))
        throw std::runtime_error(std::string("pg_server: mkdtemp: ") + std::strerror(errno));
    dir_ = tmpl;
    data_ = dir_ / "data";
    log_ = dir_ / "postgres.log";
    auto as = postgres_account();
    if (as.switch_user && ::chown(dir_.c_str(), as.uid, as.gid) != 0)
        throw std::runtime_error("pg_server: chown " + dir_.string() + ": " + std::strerror(errno));
    port_ = free_port();
    password_ = random_hex(16);

    std::vector<std::string> initdb = {bin_ + "/initdb", "-D", data_.string(), "-U", "postgres", "--auth-local=trust",
                                       "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"};
    auto [code, out] = run(initdb, dir_, as);
    if (code != 0)
        throw std::runtime_error("pg_server: " + describe(initdb) + " failed (" + std::to_string(code) + "):\n" + out);
    start();
    psql("postgres", "CREATE ROLE " + user_ + " LOGIN PASSWORD " + sql_literal(password_));
}

pg_server::~pg_server()
{
    if (pid_ > 0) {
        ::kill(pid_, SIGQUIT);
        int status = 0;
        ::waitpid(pid_, &status, 0);
    }
    const char* keep = std::getenv("SG_KEEP_TEST_DIRS");
    if (!(keep && *keep)) {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
}

void pg_server::start()
{
    if (pid_ > 0)
        throw std::runtime_error("pg_server: already running");
    // fsync=off is safe for stop("immediate") (a killed server, not a lost OS page cache);
    // synchronous_commit=off is not: it would drop the last commits on an immediate stop.
    std::vector<std::string> argv = {bin_ + "/postgres", "-D", data_.string(), "-p", std::to_string(port_),
                                     "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + dir_.string(),
                                     "-c", "fsync=off", "-c", "full_page_writes=off",
                                     "-c", "shared_buffers=16MB", "-c", "max_connections=200"};
    pid_ = spawn(argv, log_, postgres_account());
    wait_ready(60s);
}

void pg_server::wait_ready(std::chrono::milliseconds timeout)
{
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::vector<std::string> probe = {bin_ + "/pg_isready", "-q", "-h", dir_.string(), "-p", std::to_string(port_)};
    while (std::chrono::steady_clock::now() < deadline) {
        if (!running())
            throw std::runtime_error("pg_server: postgres exited:\n" + log_tail());
        if (run(probe, dir_, postgres_account(), 10s).first == 0)
            return;
        std::this_thread::sleep_for(50ms);
    }
    throw std::runtime_error("pg_server: postgres did not accept connections in time:\n" + log_tail());
}

void pg_server::stop(const std::string& mode)
{
    if (pid_ <= 0)
        return;
    ::kill(pid_, mode == "fast" ? SIGINT : mode == "smart" ? SIGTERM : SIGQUIT);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    // An immediate stop leaves the postmaster.pid behind; postgres checks it is stale on start.
}

bool pg_server::running()
{
    if (pid_ <= 0)
        return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
    }
    return true;
}

std::string pg_server::url(const std::string& database) const
{
    return "postgresql://" + user_ + ":" + password_ + "@127.0.0.1:" + std::to_string(port_) + "/" + database;
}

std::string pg_server::create_database(const std::string& name)
{
    psql("postgres", "CREATE DATABASE \"" + name + "\" OWNER " + user_);
    return url(name);
}

std::string pg_server::psql(const std::string& database, const std::string& sql)
{
    std::vector<std::string> argv = {bin_ + "/psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h",
                                     dir_.string(), "-p", std::to_string(port_), "-U", "postgres", "-d", database,
                                     "-c", sql};
    auto [code, out] = run(argv, dir_, postgres_account());
    if (code != 0)
        throw std::runtime_error("pg_server: psql failed (" + std::to_string(code) + "): " + sql + "\n" + out);
    return out;
}

std::string pg_server::log_tail(std::size_t max_chars) const
{
    std::string text = read_text(log_);
    return text.size() > max_chars ? text.substr(text.size() - max_chars) : text;
}

} // namespace sgtest
