// Self-check of the test tooling: the private sshd and the libssh2 client, without Streamgate.
#include <catch2/catch.hpp>

#include "harness.hpp"
#include "ssh_client.hpp"

using namespace sgit;

TEST_CASE("ssh fixture works directly", "[integration][harness]") {
    sshd_fixture sshd;
    ssh_client ssh(connect_tcp(sshd.port()));
    CHECK(ssh.host_key() == sshd.host_key_blob());
    ssh.authenticate(sshd.user(), sshd.user_public_key(), sshd.user_key());

    exec_result hello = ssh.exec("echo hello");
    CHECK(hello.exit_status == 0);
    CHECK(hello.out == "hello\n");

    const bytes upload = random_bytes(4 * 1024 * 1024);
    exec_result sum = ssh.exec("sha256sum", upload);
    CHECK(sum.exit_status == 0);
    CHECK(sum.out.rfind(sha256_hex(upload), 0) == 0);

    exec_result failing = ssh.exec("exit 3");
    CHECK(failing.exit_status == 3);
}
