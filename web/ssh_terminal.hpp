#pragma once
// An SSH client session (libssh2) over a stream, driven by Asio on one strand.
//
// libssh2 1.10 (Debian 12) reads and writes a socket fd itself. The terminal makes a
// socketpair(): libssh2 owns one end (non-blocking; Asio only waits for readiness on it), and the
// other end, wrapped as a tcp::socket, is joined to the relay's stream by the common byte pump.
// One coroutine runs the session: it writes pending input, reads the channel, and waits on the
// fd or for new input, so libssh2 is only ever called from that strand, one call at a time.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

typedef struct _LIBSSH2_SESSION LIBSSH2_SESSION;
typedef struct _LIBSSH2_CHANNEL LIBSSH2_CHANNEL;

namespace sg::web {

// Where the terminal's output goes (the browser's WebSocket).
class terminal_sink {
public:
    virtual ~terminal_sink() = default;
    // False when the browser is gone.
    virtual boost::asio::awaitable<bool> output(std::string_view data) = 0;
};

struct ssh_credentials {
    std::string user;
    std::string password;    // empty when a key is given
    std::string private_key; // PEM or OpenSSH text, kept only for this session
    std::string passphrase;
    void wipe();
};

class ssh_terminal {
public:
    explicit ssh_terminal(boost::asio::any_io_executor ex);
    ~ssh_terminal();
    ssh_terminal(const ssh_terminal&) = delete;
    ssh_terminal& operator=(const ssh_terminal&) = delete;

    // The far end of the socketpair, to pump to the relay's stream (taken once).
    std::shared_ptr<boost::asio::ip::tcp::socket> transport();

    // Each returns "" on success, or the reason for the user. Each phase has its deadline.
    boost::asio::awaitable<std::string> handshake(std::chrono::seconds timeout);
    // The host key as presented: its type name ("ssh-ed25519") and raw blob.
    std::string host_key_type() const;
    std::string host_key_blob() const;
    boost::asio::awaitable<std::string> authenticate(ssh_credentials& credentials, std::chrono::seconds timeout);
    boost::asio::awaitable<std::string> open_shell(int cols, int rows, std::chrono::seconds timeout);

    // Runs the shell until it ends or stop(); "" for a normal end, else the reason.
    boost::asio::awaitable<std::string> run(terminal_sink& sink);

    // From the browser, on the terminal's strand. input() waits while the input buffer is full.
    boost::asio::awaitable<void> input(std::string data);
    void resize(int cols, int rows);
    // Ends run() with `reason` (the first reason given wins).
    void stop(const std::string& reason);
    bool stopped() const { return stopped_; }
    // Says goodbye to the device (best effort, without waiting) and ends the transport: the pump
    // sees the end of stream. libssh2's fd stays open (not reusable) until destruction.
    void shutdown_transport();

    std::uint64_t bytes_in() const { return bytes_in_; }
    std::uint64_t bytes_out() const { return bytes_out_; }

private:
    enum class woke { socket, signal, timeout };
    boost::asio::awaitable<woke> wait_socket(bool also_signal, std::chrono::steady_clock::time_point deadline);
    // One wait of a set-up step: "" to try again, else why the step ends (timed out, stopped).
    boost::asio::awaitable<std::string> setup_wait(std::chrono::steady_clock::time_point deadline, const char* timed_out);
    std::string last_error(const char* what) const;
    void signal();

    boost::asio::any_io_executor ex_;
    std::shared_ptr<boost::asio::ip::tcp::socket> ssh_side_;  // libssh2's fd, used for waits only
    std::shared_ptr<boost::asio::ip::tcp::socket> pump_side_;
    LIBSSH2_SESSION* session_ = nullptr;
    LIBSSH2_CHANNEL* channel_ = nullptr;
    boost::asio::steady_timer wake_;   // cancelled when input arrives or stop() is called
    boost::asio::steady_timer space_;  // cancelled when input was consumed
    std::string pending_input_;
    int resize_cols_ = 0, resize_rows_ = 0;
    bool resize_pending_ = false, stopped_ = false;
    std::string stop_reason_;
    std::uint64_t bytes_in_ = 0, bytes_out_ = 0;
};

// Calls libssh2_init once per process.
void init_libssh2();

} // namespace sg::web
