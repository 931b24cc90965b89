// SSH through the tunnel to a real sshd started by the test, with a libssh2 client.
#include <catch2/catch.hpp>

#include "harness.hpp"
#include "ssh_client.hpp"

using namespace sgit;

namespace {
constexpr std::size_t MiB = 1024 * 1024;

// Handshake (checking that the host key is the test sshd's) and key authentication.
std::unique_ptr<ssh_client> ssh_login(unique_fd sock, sshd_fixture& sshd) {
    auto ssh = std::make_unique<ssh_client>(std::move(sock));
    CHECK(ssh->host_key() == sshd.host_key_blob());
    ssh->authenticate(sshd.user(), sshd.user_public_key(), sshd.user_key());
    return ssh;
}

void check_echo(ssh_client& ssh, const std::string& word) {
    exec_result r = ssh.exec("echo " + word);
    INFO("stderr: " << r.err);
    CHECK(r.exit_status == 0);
    CHECK(r.out == word + "\n");
}
}  // namespace

TEST_CASE("ssh: exec, 4 MiB upload and 4 MiB download through the tunnel", "[integration][ssh]") {
    sshd_fixture sshd;
    tunnel_fixture tunnel({.target_port = sshd.port()});

    auto ssh = ssh_login(connect_tcp(tunnel.local_port), sshd);
    check_echo(*ssh, "hello");

    {  // upload: sha256sum of what arrives on stdin
        const bytes upload = random_bytes(4 * MiB);
        exec_result r = ssh->exec("sha256sum", upload);
        INFO("stderr: " << r.err);
        CHECK(r.exit_status == 0);
        CHECK(r.out.rfind(sha256_hex(upload) + " ", 0) == 0);
    }
    {  // download: cat of a file next to the sshd
        const bytes download = random_bytes(4 * MiB);
        const auto file = sshd.dir() / "download.bin";
        write_file(file, download);
        exec_result r = ssh->exec("cat '" + file.string() + "'");
        INFO("stderr: " << r.err);
        CHECK(r.exit_status == 0);
        CHECK(r.out.size() == download.size());
        CHECK(sha256_hex(r.out) == sha256_hex(download));
    }
    INFO(tunnel.service_proxy->describe());
    INFO(tunnel.device_proxy->describe());
    CHECK(tunnel.device_proxy->running());
}

TEST_CASE("ssh: a second session works while the first is open", "[integration][ssh]") {
    sshd_fixture sshd;
    tunnel_fixture tunnel({.target_port = sshd.port()});

    auto first = ssh_login(connect_tcp(tunnel.local_port), sshd);
    check_echo(*first, "first");
    auto second = ssh_login(connect_tcp(tunnel.local_port), sshd);
    check_echo(*second, "second");
    // Both are still usable.
    check_echo(*first, "first-again");
    check_echo(*second, "second-again");
}

TEST_CASE("ssh: over --stdio like an SSH ProxyCommand", "[integration][ssh][stdio]") {
    sshd_fixture sshd;
    tunnel_fixture tunnel({.target_port = sshd.port(), .start_service_proxy = false});

    auto [mine, theirs] = socket_pair();
    auto proxy = tunnel.stdio_service_proxy(theirs.get());
    theirs.reset();
    {
        auto ssh = ssh_login(std::move(mine), sshd);
        check_echo(*ssh, "hi");
    }  // SSH disconnect closes our end: the one stream is over

    // The stream is over end to end, so the --stdio proxy exits.
    std::optional<int> code = proxy->wait_exit(k_connect_timeout);
    INFO(proxy->describe());
    CHECK(code.has_value());
}

TEST_CASE("ssh: --service maps stream names and an unknown name is rejected with the reason from the device",
          "[integration][ssh][stdio]") {
    sshd_fixture sshd;
    tunnel_fixture tunnel({.target_port = sshd.port(),
                           .device_proxy_args = {"--service", "ssh=127.0.0.1:" + std::to_string(sshd.port())},
                           .start_service_proxy = false});

    {   // The named service is accepted.
        auto [mine, theirs] = socket_pair();
        auto proxy = tunnel.stdio_service_proxy(theirs.get(), {"--stream-name", "ssh"});
        theirs.reset();
        auto ssh = ssh_login(std::move(mine), sshd);
        check_echo(*ssh, "via-ssh-service");
    }
    {   // An unknown one is rejected, and the reason reaches the service side.
        auto [mine, theirs] = socket_pair();
        auto proxy = tunnel.stdio_service_proxy(theirs.get(), {"--stream-name", "nosuch"});
        theirs.reset();
        std::optional<int> code = proxy->wait_exit(k_connect_timeout);
        INFO(proxy->describe());
        INFO(tunnel.device_proxy->describe());
        REQUIRE(code.has_value());
        CHECK(*code != 0);
        CHECK(contains(proxy->stderr_text(), "nosuch"));
    }
    CHECK(tunnel.device_proxy->running());
}
