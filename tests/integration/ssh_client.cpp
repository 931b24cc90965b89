#include "ssh_client.hpp"

#include <poll.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>

#include <libssh2.h>

namespace sgit {

namespace {

void init_libssh2_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (libssh2_init(0) != 0) throw std::runtime_error("libssh2_init failed");
    });
}

}  // namespace

ssh_client::ssh_client(unique_fd sock, millis timeout) : sock_(std::move(sock)), timeout_(timeout) {
    init_libssh2_once();
    session_ = libssh2_session_init();
    if (session_ == nullptr) throw std::runtime_error("libssh2_session_init failed");
    libssh2_session_set_blocking(session_, 0);
    const auto deadline = steady::now() + timeout_;
    int rc;
    while ((rc = libssh2_session_handshake(session_, sock_.get())) == LIBSSH2_ERROR_EAGAIN)
        wait_socket(deadline, "SSH handshake");
    if (rc != 0) fail("SSH handshake");
}

ssh_client::~ssh_client() {
    if (session_ == nullptr) return;
    // Best effort, bounded: the peer may already be gone.
    libssh2_session_set_timeout(session_, 2000);
    libssh2_session_set_blocking(session_, 1);
    libssh2_session_disconnect(session_, "bye");
    libssh2_session_free(session_);
}

void ssh_client::fail(const std::string& what) {
    char* msg = nullptr;
    int code = libssh2_session_last_error(session_, &msg, nullptr, 0);
    throw std::runtime_error(what + " failed: libssh2 error " + std::to_string(code) + " (" +
                             (msg ? msg : "") + ")");
}

void ssh_client::wait_socket(steady::time_point deadline, const char* what) {
    const auto now = steady::now();
    if (now >= deadline)
        throw std::runtime_error(std::string(what) + " timed out after " +
                                 std::to_string(timeout_.count()) + " ms");
    const int dirs = libssh2_session_block_directions(session_);
    short events = 0;
    if (dirs & LIBSSH2_SESSION_BLOCK_INBOUND) events |= POLLIN;
    if (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) events |= POLLOUT;
    if (events == 0) events = POLLIN;
    auto left = std::chrono::duration_cast<millis>(deadline - now).count();
    pollfd p{sock_.get(), events, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 100)));
}

bytes ssh_client::host_key() const {
    size_t len = 0;
    int type = 0;
    const char* key = libssh2_session_hostkey(session_, &len, &type);
    if (key == nullptr) return {};
    return bytes(key, key + len);
}

void ssh_client::authenticate(const std::string& user, const std::filesystem::path& public_key,
                              const std::filesystem::path& private_key) {
    const auto deadline = steady::now() + timeout_;
    int rc;
    while ((rc = libssh2_userauth_publickey_fromfile(session_, user.c_str(), public_key.c_str(),
                                                     private_key.c_str(), "")) ==
           LIBSSH2_ERROR_EAGAIN)
        wait_socket(deadline, "public key authentication");
    if (rc != 0) fail("public key authentication as " + user);
}

exec_result ssh_client::exec(const std::string& command, std::span<const unsigned char> stdin_data,
                             millis timeout) {
    const auto deadline = steady::now() + timeout;
    const std::string what = "exec '" + command + "'";

    LIBSSH2_CHANNEL* channel = nullptr;
    while ((channel = libssh2_channel_open_session(session_)) == nullptr) {
        if (libssh2_session_last_errno(session_) != LIBSSH2_ERROR_EAGAIN) fail(what + ": open channel");
        wait_socket(deadline, what.c_str());
    }
    struct channel_guard {
        LIBSSH2_CHANNEL* c;
        ~channel_guard() { libssh2_channel_free(c); }
    } guard{channel};

    int rc;
    while ((rc = libssh2_channel_exec(channel, command.c_str())) == LIBSSH2_ERROR_EAGAIN)
        wait_socket(deadline, what.c_str());
    if (rc != 0) fail(what);

    exec_result result;
    std::size_t written = 0;
    bool eof_sent = false, out_done = false, err_done = false;
    char buf[32 * 1024];
    while (!eof_sent || !out_done || !err_done) {
        bool progress = false;
        if (!eof_sent) {
            if (written < stdin_data.size()) {
                std::size_t chunk = std::min<std::size_t>(stdin_data.size() - written, sizeof buf);
                ssize_t n = libssh2_channel_write(
                    channel, reinterpret_cast<const char*>(stdin_data.data() + written), chunk);
                if (n > 0) {
                    written += static_cast<std::size_t>(n);
                    progress = true;
                } else if (n != LIBSSH2_ERROR_EAGAIN && n != 0) {
                    fail(what + ": write stdin");
                }
            } else {
                rc = libssh2_channel_send_eof(channel);
                if (rc == 0) {
                    eof_sent = true;
                    progress = true;
                } else if (rc != LIBSSH2_ERROR_EAGAIN) {
                    fail(what + ": send EOF");
                }
            }
        }
        if (!out_done) {
            ssize_t n = libssh2_channel_read(channel, buf, sizeof buf);
            if (n > 0) {
                result.out.append(buf, static_cast<std::size_t>(n));
                progress = true;
            } else if (n == 0) {
                out_done = libssh2_channel_eof(channel) != 0;
            } else if (n != LIBSSH2_ERROR_EAGAIN) {
                fail(what + ": read stdout");
            }
        }
        if (!err_done) {
            ssize_t n = libssh2_channel_read_stderr(channel, buf, sizeof buf);
            if (n > 0) {
                result.err.append(buf, static_cast<std::size_t>(n));
                progress = true;
            } else if (n == 0) {
                err_done = libssh2_channel_eof(channel) != 0;
            } else if (n != LIBSSH2_ERROR_EAGAIN) {
                fail(what + ": read stderr");
            }
        }
        // The command may finish without reading all of its stdin: stop writing then.
        if (out_done && err_done && !eof_sent) eof_sent = true;
        if (!progress) wait_socket(deadline, what.c_str());
    }

    while ((rc = libssh2_channel_close(channel)) == LIBSSH2_ERROR_EAGAIN)
        wait_socket(deadline, what.c_str());
    while ((rc = libssh2_channel_wait_closed(channel)) == LIBSSH2_ERROR_EAGAIN)
        wait_socket(deadline, what.c_str());
    result.exit_status = libssh2_channel_get_exit_status(channel);
    return result;
}

}  // namespace sgit
