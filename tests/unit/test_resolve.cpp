// client::resolve_within against a DNS server that never answers: the look-up fails at its
// deadline instead of waiting out the system resolver's own timeouts, and an address given as
// such resolves at once even while the resolver thread is stuck. The test runs in a child
// with a private mount namespace whose /etc/resolv.conf names a silent server on loopback.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include "common/client.hpp"

namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

enum child_result {
    ok = 0,
    no_namespace = 10,
    no_private_mounts = 11,
    no_resolv_conf = 12,
    no_silent_server = 13,
    never_finished = 20,
    not_timed_out = 21,
    wrong_time = 22,
    address_waited = 23,
    address_wrong = 24,
};

// Returns through _exit only: the abandoned look-up keeps the resolver thread busy for the
// system resolver's 30 s, and destroying the io_context would wait for it.
[[noreturn]] void run_child(const std::string& resolv_conf)
{
    if (unshare(CLONE_NEWNS) != 0)
        _exit(no_namespace);
    if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        _exit(no_private_mounts);
    if (mount(resolv_conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0)
        _exit(no_resolv_conf);
    // Takes the queries and never answers.
    int silent = socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(53);
    inet_pton(AF_INET, "127.0.0.77", &addr.sin_addr);
    if (silent < 0 || bind(silent, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        _exit(no_silent_server);

    auto* io = new asio::io_context; // never destroyed, see above
    boost::system::error_code result;
    bool finished = false;
    const auto started = std::chrono::steady_clock::now();
    asio::co_spawn(
        *io,
        [&]() -> asio::awaitable<void> {
            auto r = co_await sg::client::resolve_within("relay.blackhole.test", 443, 1s);
            result = std::get<0>(r);
            finished = true;
        },
        asio::detached);
    while (!finished && std::chrono::steady_clock::now() - started < 10s)
        io->run_one_for(100ms);
    const auto took = std::chrono::steady_clock::now() - started;
    if (!finished)
        _exit(never_finished);
    if (result != asio::error::timed_out)
        _exit(not_timed_out);
    if (took < 900ms || took > 3s)
        _exit(wrong_time);

    // The resolver thread is still stuck in that look-up: an address must not queue behind it.
    finished = false;
    asio::ip::tcp::resolver::results_type address;
    const auto asked = std::chrono::steady_clock::now();
    asio::co_spawn(
        *io,
        [&]() -> asio::awaitable<void> {
            auto r = co_await sg::client::resolve_within("127.0.0.1", 443, 1s);
            result = std::get<0>(r);
            address = std::get<1>(r);
            finished = true;
        },
        asio::detached);
    while (!finished && std::chrono::steady_clock::now() - asked < 5s)
        io->run_one_for(100ms);
    if (!finished || result || std::chrono::steady_clock::now() - asked > 200ms)
        _exit(address_waited);
    if (address.size() != 1 ||
        address.begin()->endpoint() != asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 443))
        _exit(address_wrong);
    _exit(ok);
}

} // namespace

TEST_CASE("client: a name look-up that gets no answer from DNS fails at its deadline, and an address "
          "needs no look-up",
          "[client][dns]")
{
    if (geteuid() != 0) {
        WARN("skipped: needs root for a private mount namespace (CI runs as root)");
        return;
    }
    char dir_template[] = "/tmp/sg-resolve-XXXXXX";
    REQUIRE(mkdtemp(dir_template) != nullptr);
    const std::string resolv_conf = std::string(dir_template) + "/resolv.conf";
    std::ofstream(resolv_conf) << "nameserver 127.0.0.77\noptions timeout:30 attempts:1\n";

    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0)
        run_child(resolv_conf);

    int status = 0;
    bool exited = false;
    const auto deadline = std::chrono::steady_clock::now() + 15s;
    while (std::chrono::steady_clock::now() < deadline) {
        if (waitpid(child, &status, WNOHANG) == child) {
            exited = true;
            break;
        }
        std::this_thread::sleep_for(50ms);
    }
    if (!exited) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
    }
    std::remove(resolv_conf.c_str());
    rmdir(dir_template);
    INFO("child status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1)
                         << " (20 never finished, 21 not timed out, 22 outside 0.9-3 s, 23 the address waited for the resolver, "
                            "24 the address came back wrong, 10-13 set-up)");
    REQUIRE(exited);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == ok);
}
