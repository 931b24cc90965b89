// A minimal SSH client on libssh2 for the tests: handshake over a connected socket (TCP or one
// end of a socketpair), public key authentication from files, and exec with stdin data.
//
// libssh2 is used in non-blocking mode with an explicit deadline per operation, so a tunnel that
// stalls makes the call throw std::runtime_error instead of hanging. Errors carry libssh2's
// message.
#pragma once

#include <filesystem>
#include <span>
#include <string>

#include "harness.hpp"

typedef struct _LIBSSH2_SESSION LIBSSH2_SESSION;

namespace sgit {

struct exec_result {
    int exit_status = -1;
    std::string out;
    std::string err;
};

class ssh_client {
public:
    // Takes ownership of `sock` and performs the SSH handshake.
    explicit ssh_client(unique_fd sock, millis timeout = k_command_timeout);
    ~ssh_client();
    ssh_client(const ssh_client&) = delete;
    ssh_client& operator=(const ssh_client&) = delete;

    // The server's raw host key blob (compare with sshd_fixture::host_key_blob()).
    bytes host_key() const;

    // Throws if the server refuses the key.
    void authenticate(const std::string& user, const std::filesystem::path& public_key,
                      const std::filesystem::path& private_key);

    // Runs `command`, writes `stdin_data`, sends EOF, and collects stdout/stderr until the channel
    // closes. `timeout` bounds the whole call.
    exec_result exec(const std::string& command, std::span<const unsigned char> stdin_data = {},
                     millis timeout = k_transfer_timeout);

private:
    // Waits until the socket is ready in the direction libssh2 is blocked on (at most 100 ms so a
    // missed wake-up only costs a retry); throws once `deadline` has passed.
    void wait_socket(steady::time_point deadline, const char* what);
    [[noreturn]] void fail(const std::string& what);

    unique_fd sock_;
    LIBSSH2_SESSION* session_ = nullptr;
    millis timeout_;
};

}  // namespace sgit
