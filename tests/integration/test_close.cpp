// Close without loss, and half-close: the last bytes before a close arrive, and a FIN in one
// direction leaves the other one open.
#include <catch2/catch.hpp>

#include <sys/socket.h>

#include <thread>

#include "harness.hpp"
#include "ssh_client.hpp"

using namespace sgit;

namespace {

constexpr std::size_t MiB = 1024 * 1024;

// Blocking send of everything; false on error.
bool send_all(int fd, std::span<const unsigned char> data) {
    std::size_t off = 0;
    while (off < data.size()) {
        ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        off += static_cast<std::size_t>(n);
    }
    return true;
}

}  // namespace

TEST_CASE("close: a target that writes N bytes and closes at once: the client gets all N, then EOF",
          "[integration][close]") {
    tcp_listener target;
    tunnel_fixture tunnel({.target_port = target.port()});

    // Sizes around the 64 KiB message size, and 3 MiB.
    for (std::size_t size : {std::size_t{1}, std::size_t{64 * 1024 + 1}, 3 * MiB}) {
        const bytes data = random_bytes(size);
        std::string target_error;
        std::jthread server([&](std::stop_token stop) {
            unique_fd conn = target.accept(k_transfer_timeout, stop);
            if (!conn) {
                target_error = "no connection reached the target";
                return;
            }
            if (!send_all(conn.get(), data)) target_error = "send failed";
            // close() right after the last write: nothing is read, so the kernel sends a FIN
        });
        unique_fd client = connect_tcp(tunnel.local_port);
        // Reads until EOF; the client never sends anything nor shuts down its side.
        transfer_result r = transfer(client.get(), {}, {.timeout = k_transfer_timeout});
        server.join();
        INFO("size " << size << ": " << r.error << " " << target_error);
        INFO(tunnel.device_proxy->describe());
        CHECK(target_error.empty());
        CHECK(r.ok());  // ended with EOF, not a reset or a timeout
        CHECK(r.received == size);
        CHECK(r.received_sha256 == sha256_hex(data));
    }
}

TEST_CASE("close: a client that writes N bytes and closes at once: the target gets all N, then EOF",
          "[integration][close]") {
    tcp_listener target;
    tunnel_fixture tunnel({.target_port = target.port()});

    for (std::size_t size : {std::size_t{1}, std::size_t{64 * 1024 + 1}, 3 * MiB}) {
        const bytes data = random_bytes(size);
        transfer_result at_target;
        std::jthread server([&](std::stop_token stop) {
            unique_fd conn = target.accept(k_transfer_timeout, stop);
            if (!conn) {
                at_target.error = "no connection reached the target";
                return;
            }
            at_target = transfer(conn.get(), {}, {.timeout = k_transfer_timeout, .stop = stop});
        });
        {
            unique_fd client = connect_tcp(tunnel.local_port);
            CHECK(send_all(client.get(), data));
        }  // close() right after the last write
        server.join();
        INFO("size " << size << ": " << at_target.error);
        CHECK(at_target.ok());
        CHECK(at_target.received == size);
        CHECK(at_target.received_sha256 == sha256_hex(data));
    }
}

TEST_CASE("close: half-close: the client's FIN reaches the target as EOF and the target's reply, "
          "sent after EOF, still arrives",
          "[integration][close]") {
    tcp_listener target;
    tunnel_fixture tunnel({.target_port = target.port()});

    const bytes upload = random_bytes(2 * MiB + 17);
    std::string target_error;
    std::string digest_at_target;
    std::jthread server([&](std::stop_token stop) {
        unique_fd conn = target.accept(k_transfer_timeout, stop);
        if (!conn) {
            target_error = "no connection reached the target";
            return;
        }
        // Read to EOF (the target cannot answer before: it hashes everything)…
        transfer_result in = transfer(conn.get(), {}, {.timeout = k_transfer_timeout, .stop = stop});
        if (!in.ok()) {
            target_error = "reading to EOF: " + in.error;
            return;
        }
        digest_at_target = in.received_sha256;
        // …take its time (a slow server; the half-closed stream must stay open)…
        std::this_thread::sleep_for(1s);
        // …then answer and close.
        const std::string reply = in.received_sha256 + "  " + std::to_string(in.received) + "\n";
        if (!send_all(conn.get(), std::span(reinterpret_cast<const unsigned char*>(reply.data()), reply.size())))
            target_error = "send failed";
    });

    unique_fd client = connect_tcp(tunnel.local_port);
    // Sends everything, shutdown(SHUT_WR), then reads the reply until EOF.
    transfer_result r = transfer(client.get(), upload, {.shutdown_after_send = true, .timeout = k_transfer_timeout});
    server.join();
    INFO("client: " << r.error << "; target: " << target_error);
    INFO(tunnel.device_proxy->describe());
    CHECK(target_error.empty());
    CHECK(digest_at_target == sha256_hex(upload));
    CHECK(r.ok());
    const std::string expected = sha256_hex(upload) + "  " + std::to_string(upload.size()) + "\n";
    CHECK(r.received == expected.size());
    CHECK(r.received_sha256 == sha256_hex(expected));
}

TEST_CASE("close: through SSH 'cat > f && sha256sum f' stores and hashes all 3 MiB sent on stdin",
          "[integration][close][ssh]") {
    sshd_fixture sshd;
    tunnel_fixture tunnel({.target_port = sshd.port()});

    ssh_client ssh(connect_tcp(tunnel.local_port));
    CHECK(ssh.host_key() == sshd.host_key_blob());
    ssh.authenticate(sshd.user(), sshd.user_public_key(), sshd.user_key());

    const bytes upload = random_bytes(3 * MiB + 5);
    const auto file = sshd.dir() / "uploaded.bin";
    exec_result r = ssh.exec("cat > '" + file.string() + "' && sha256sum '" + file.string() + "'", upload);
    INFO("stderr: " << r.err);
    CHECK(r.exit_status == 0);
    CHECK(r.out.rfind(sha256_hex(upload) + " ", 0) == 0);
    CHECK(sha256_hex(read_file(file)) == sha256_hex(upload));
}
