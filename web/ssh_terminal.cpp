#include "web/ssh_terminal.hpp"

#include <sys/socket.h>
#include <libssh2.h>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <variant>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <openssl/crypto.h>

namespace sg::web {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using clock = std::chrono::steady_clock;
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);
constexpr std::size_t max_pending_input = 64 * 1024;

void init_libssh2()
{
    static std::once_flag once;
    std::call_once(once, [] {
        if (libssh2_init(0) != 0)
            throw std::runtime_error("libssh2_init failed");
    });
}

void ssh_credentials::wipe()
{
    for (auto* s : {&password, &private_key, &passphrase}) {
        OPENSSL_cleanse(s->data(), s->size());
        s->clear();
    }
}

ssh_terminal::ssh_terminal(asio::any_io_executor ex) : ex_(ex), wake_(ex), space_(ex)
{
    init_libssh2();
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
        throw std::runtime_error(std::string("socketpair: ") + std::strerror(errno));
    // Both ends are AF_UNIX stream sockets held as tcp::socket: the pump's tcp_end and the
    // readiness waits use only read/write/shutdown/poll, which behave the same on either family.
    ssh_side_ = std::make_shared<tcp::socket>(ex);
    pump_side_ = std::make_shared<tcp::socket>(ex);
    error_code ec;
    ssh_side_->assign(tcp::v4(), fds[0], ec);
    pump_side_->assign(tcp::v4(), fds[1], ec);
    ssh_side_->non_blocking(true, ec);
    session_ = libssh2_session_init();
    if (!session_)
        throw std::runtime_error("libssh2_session_init failed");
    libssh2_session_set_blocking(session_, 0);
}

ssh_terminal::~ssh_terminal()
{
    // The transport is shut down first, so nothing below can wait: every send fails at once.
    ::shutdown(ssh_side_->native_handle(), SHUT_RDWR);
    if (channel_)
        libssh2_channel_free(channel_);
    if (session_)
        libssh2_session_free(session_);
    error_code ec;
    ssh_side_->close(ec);
}

std::shared_ptr<tcp::socket> ssh_terminal::transport() { return pump_side_; }

void ssh_terminal::shutdown_transport()
{
    if (channel_ && libssh2_channel_free(channel_) == 0)
        channel_ = nullptr;
    libssh2_session_disconnect(session_, "closed by streamgate-web");
    ::shutdown(ssh_side_->native_handle(), SHUT_RDWR);
}

std::string ssh_terminal::last_error(const char* what) const
{
    char* msg = nullptr;
    int len = 0;
    int code = libssh2_session_last_error(session_, &msg, &len, 0);
    return std::string(what) + ": " + (msg && len ? std::string(msg, len) : "error " + std::to_string(code));
}

void ssh_terminal::signal()
{
    wake_.cancel();
}

asio::awaitable<ssh_terminal::woke> ssh_terminal::wait_socket(bool also_signal, clock::time_point deadline)
{
    using namespace asio::experimental::awaitable_operators;
    int dirs = libssh2_session_block_directions(session_);
    auto what = (dirs & LIBSSH2_SESSION_BLOCK_OUTBOUND) ? tcp::socket::wait_write : tcp::socket::wait_read;
    asio::steady_timer deadline_timer(ex_, deadline);
    if (also_signal) {
        wake_.expires_at(clock::time_point::max());
        auto r = co_await (ssh_side_->async_wait(what, use_nothrow) || deadline_timer.async_wait(use_nothrow) ||
                           wake_.async_wait(use_nothrow));
        co_return r.index() == 0 ? woke::socket : r.index() == 1 ? woke::timeout : woke::signal;
    }
    auto r = co_await (ssh_side_->async_wait(what, use_nothrow) || deadline_timer.async_wait(use_nothrow));
    co_return r.index() == 0 ? woke::socket : woke::timeout;
}

asio::awaitable<std::string> ssh_terminal::setup_wait(clock::time_point deadline, const char* timed_out)
{
    // Also woken by stop(): a browser that leaves during the set-up does not wait for its deadline.
    woke w = co_await wait_socket(true, deadline);
    if (stopped_)
        co_return stop_reason_;
    if (w == woke::timeout)
        co_return std::string(timed_out);
    co_return std::string{};
}

asio::awaitable<std::string> ssh_terminal::handshake(std::chrono::seconds timeout)
{
    auto deadline = clock::now() + timeout;
    int rc;
    while ((rc = libssh2_session_handshake(session_, static_cast<libssh2_socket_t>(ssh_side_->native_handle()))) ==
           LIBSSH2_ERROR_EAGAIN) {
        std::string ended = co_await setup_wait(deadline, "SSH handshake timed out (is sshd behind the device's ssh service?)");
        if (!ended.empty())
            co_return ended;
    }
    if (rc)
        co_return last_error("SSH handshake failed");
    co_return std::string{};
}

std::string ssh_terminal::host_key_type() const
{
    std::size_t len = 0;
    int type = 0;
    libssh2_session_hostkey(session_, &len, &type);
    switch (type) {
    case LIBSSH2_HOSTKEY_TYPE_RSA: return "ssh-rsa";
    case LIBSSH2_HOSTKEY_TYPE_DSS: return "ssh-dss";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return "ecdsa-sha2-nistp256";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return "ecdsa-sha2-nistp384";
    case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ecdsa-sha2-nistp521";
    case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ssh-ed25519";
    default: return "unknown";
    }
}

std::string ssh_terminal::host_key_blob() const
{
    std::size_t len = 0;
    int type = 0;
    const char* key = libssh2_session_hostkey(session_, &len, &type);
    return key ? std::string(key, len) : std::string{};
}

namespace {
// keyboard-interactive with PAM (sshd's default on many systems) asks "Password:": every prompt
// gets the password, as ssh does when the user types it.
void answer_with_password(const char*, int, const char*, int, int num_prompts, const LIBSSH2_USERAUTH_KBDINT_PROMPT*,
                          LIBSSH2_USERAUTH_KBDINT_RESPONSE* responses, void** abstract)
{
    auto* password = static_cast<const std::string*>(*abstract);
    for (int i = 0; i < num_prompts; ++i) {
        // libssh2 frees each response with its allocator (free by default).
        responses[i].text = static_cast<char*>(std::malloc(password->size() + 1));
        if (!responses[i].text) {
            responses[i].length = 0;
            continue;
        }
        std::memcpy(responses[i].text, password->c_str(), password->size() + 1);
        responses[i].length = static_cast<unsigned>(password->size());
    }
}
} // namespace

asio::awaitable<std::string> ssh_terminal::authenticate(ssh_credentials& c, std::chrono::seconds timeout)
{
    auto deadline = clock::now() + timeout;
    // The methods the device offers (also starts the "none" round trip).
    std::string methods;
    for (;;) {
        const char* list = libssh2_userauth_list(session_, c.user.data(), static_cast<unsigned>(c.user.size()));
        if (list) {
            methods = list;
            break;
        }
        if (libssh2_userauth_authenticated(session_))
            co_return std::string{};
        if (libssh2_session_last_errno(session_) != LIBSSH2_ERROR_EAGAIN)
            co_return last_error("the device did not list its SSH authentication methods");
        std::string ended = co_await setup_wait(deadline, "SSH authentication timed out");
        if (!ended.empty())
            co_return ended;
    }
    bool keyboard = c.private_key.empty() && methods.find("password") == std::string::npos &&
                    methods.find("keyboard-interactive") != std::string::npos;
    void** abstract = libssh2_session_abstract(session_);
    void* saved = *abstract;
    *abstract = &c.password;
    int rc;
    for (;;) {
        if (!c.private_key.empty())
            rc = libssh2_userauth_publickey_frommemory(session_, c.user.data(), c.user.size(), nullptr, 0,
                                                       c.private_key.data(), c.private_key.size(),
                                                       c.passphrase.empty() ? nullptr : c.passphrase.c_str());
        else if (keyboard)
            rc = libssh2_userauth_keyboard_interactive_ex(session_, c.user.data(), static_cast<unsigned>(c.user.size()),
                                                          answer_with_password);
        else
            rc = libssh2_userauth_password_ex(session_, c.user.data(), static_cast<unsigned>(c.user.size()),
                                              c.password.data(), static_cast<unsigned>(c.password.size()), nullptr);
        if (rc != LIBSSH2_ERROR_EAGAIN)
            break;
        std::string ended = co_await setup_wait(deadline, "SSH authentication timed out");
        if (!ended.empty()) {
            *abstract = saved;
            co_return ended;
        }
    }
    *abstract = saved;
    c.wipe();
    if (rc == LIBSSH2_ERROR_FILE || rc == LIBSSH2_ERROR_METHOD_NOT_SUPPORTED)
        co_return last_error("the private key could not be used");
    if (rc)
        co_return "SSH authentication failed for user " + c.user + " (wrong password or key, or the device does not "
               "accept this method; it offers: " + methods + ")";
    co_return std::string{};
}

asio::awaitable<std::string> ssh_terminal::open_shell(int cols, int rows, std::chrono::seconds timeout)
{
    auto deadline = clock::now() + timeout;
    while (!(channel_ = libssh2_channel_open_session(session_))) {
        if (libssh2_session_last_errno(session_) != LIBSSH2_ERROR_EAGAIN)
            co_return last_error("cannot open an SSH channel");
        std::string ended = co_await setup_wait(deadline, "opening the SSH channel timed out");
        if (!ended.empty())
            co_return ended;
    }
    int rc;
    while ((rc = libssh2_channel_request_pty_ex(channel_, "xterm-256color", 14, nullptr, 0, cols, rows, 0, 0)) ==
           LIBSSH2_ERROR_EAGAIN) {
        std::string ended = co_await setup_wait(deadline, "the PTY request timed out");
        if (!ended.empty())
            co_return ended;
    }
    if (rc)
        co_return last_error("the device refused a PTY");
    while ((rc = libssh2_channel_shell(channel_)) == LIBSSH2_ERROR_EAGAIN) {
        std::string ended = co_await setup_wait(deadline, "starting the shell timed out");
        if (!ended.empty())
            co_return ended;
    }
    if (rc)
        co_return last_error("the device refused a shell");
    co_return std::string{};
}

asio::awaitable<void> ssh_terminal::input(std::string data)
{
    while (!stopped_ && pending_input_.size() >= max_pending_input) {
        space_.expires_at(clock::now() + std::chrono::seconds(30));
        co_await space_.async_wait(use_nothrow);
    }
    pending_input_ += data;
    signal();
}

void ssh_terminal::resize(int cols, int rows)
{
    resize_cols_ = cols;
    resize_rows_ = rows;
    resize_pending_ = true;
    signal();
}

void ssh_terminal::stop(const std::string& reason)
{
    if (!stopped_)
        stop_reason_ = reason;
    stopped_ = true;
    signal();
    space_.cancel();
}

asio::awaitable<std::string> ssh_terminal::run(terminal_sink& sink)
{
    // An idle shell may wait for hours; the browser's WebSocket and the relay's pings detect a
    // dead peer, so this wait's deadline is long.
    const auto idle = std::chrono::hours(24);
    char buf[16 * 1024];
    while (!stopped_) {
        bool progress = false;
        if (!pending_input_.empty()) {
            ssize_t n = libssh2_channel_write(channel_, pending_input_.data(), pending_input_.size());
            if (n == LIBSSH2_ERROR_EAGAIN) {
                // Finish this write before any other libssh2 call (libssh2 keeps one partial packet).
                co_await wait_socket(false, clock::now() + std::chrono::seconds(60));
                continue;
            }
            if (n < 0)
                co_return last_error("writing to the SSH channel failed");
            bytes_in_ += static_cast<std::uint64_t>(n);
            pending_input_.erase(0, static_cast<std::size_t>(n));
            space_.cancel();
            progress = true;
        }
        if (resize_pending_) {
            int rc = libssh2_channel_request_pty_size(channel_, resize_cols_, resize_rows_);
            if (rc == LIBSSH2_ERROR_EAGAIN) {
                co_await wait_socket(false, clock::now() + std::chrono::seconds(60));
                continue;
            }
            resize_pending_ = false;
            progress = true;
        }
        ssize_t n = libssh2_channel_read(channel_, buf, sizeof buf);
        if (n > 0) {
            bytes_out_ += static_cast<std::uint64_t>(n);
            if (!co_await sink.output(std::string_view(buf, static_cast<std::size_t>(n))))
                co_return std::string("the browser went away");
            continue;
        }
        if (n < 0 && n != LIBSSH2_ERROR_EAGAIN)
            co_return last_error("reading the SSH channel failed");
        if (libssh2_channel_eof(channel_))
            co_return std::string{};
        if (!progress && !stopped_)
            co_await wait_socket(true, clock::now() + idle);
    }
    co_return stop_reason_;
}

} // namespace sg::web
