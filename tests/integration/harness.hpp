// Helpers for the integration tests: temporary directories, child processes, loopback sockets,
// checksums, and fixtures that start the relay and a private sshd.
//
// Rules the helpers follow so that a broken product fails instead of hanging:
//   - every wait has a deadline; waiting polls a real condition, never "sleep and hope";
//   - child processes are killed (SIGKILL) and reaped when their `process` object goes away, and
//     also die with the test binary (PR_SET_PDEATHSIG);
//   - when a test fails, every process that is torn down prints the tail of its stdout/stderr to
//     std::cerr (set SG_TEST_PRINT_LOGS=1 to always print, SG_KEEP_TEST_DIRS=1 to keep the files).
//
// Spawn processes from the test's main thread: PR_SET_PDEATHSIG fires when the spawning *thread*
// exits.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include <openssl/evp.h>

namespace sgit {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using millis = std::chrono::milliseconds;
using bytes = std::vector<unsigned char>;
using env_list = std::vector<std::pair<std::string, std::string>>;

// Paths of the binaries under test (compile definitions set by CMakeLists.txt).
namespace bin {
inline const std::string relay = SG_RELAY_BIN;
inline const std::string device_proxy = SG_DEVICE_PROXY_BIN;
inline const std::string service_proxy = SG_SERVICE_PROXY_BIN;
inline const std::string echo_device = SG_ECHO_DEVICE_BIN;
inline const std::string echo_service = SG_ECHO_SERVICE_BIN;
}  // namespace bin

// Timeouts shared by the tests.
inline constexpr millis k_start_timeout = 20s;    // a server starts listening
inline constexpr millis k_connect_timeout = 20s;  // a device shows up as Connected
inline constexpr millis k_fail_timeout = 10s;     // a client that must fail fast (404103, 401003…)
inline constexpr millis k_command_timeout = 30s;  // an admin command or a short client run
inline constexpr millis k_transfer_timeout = 60s; // big transfers

// ---------------------------------------------------------------------------------------------
// Failure bookkeeping (set by the Catch listener in main.cpp).
namespace detail {
void set_test_failed(bool failed);
}
bool current_test_failed();

// ---------------------------------------------------------------------------------------------
// Small utilities.

// Polls `pred` every `poll` until it returns true (-> true) or `timeout` passes (-> false).
bool wait_until(const std::function<bool()>& pred, millis timeout, millis poll = 20ms);

bool contains(const std::string& haystack, const std::string& needle);
// The delays of a device proxy's "reconnecting in X.Xs" log lines, in order.
std::vector<double> reconnect_delays(const std::string& log);
// Number of (non-overlapping) occurrences of `needle` in `haystack`.
std::size_t count_of(const std::string& haystack, const std::string& needle);
std::string trim(std::string s);
std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, std::span<const unsigned char> data);
std::string tail(const std::string& s, std::size_t max_chars);

bytes random_bytes(std::size_t n);
std::string sha256_hex(std::span<const unsigned char> data);
std::string sha256_hex(const std::string& data);
std::string base64_encode(std::span<const unsigned char> data);
bytes base64_decode(const std::string& text);

// Incremental SHA-256 (for data that arrives in pieces).
class sha256 {
public:
    sha256();
    ~sha256();
    sha256(const sha256&) = delete;
    sha256& operator=(const sha256&) = delete;
    void update(const void* data, std::size_t n);
    std::string hex_digest();  // finalises; call once

private:
    EVP_MD_CTX* ctx_;
};

// ---------------------------------------------------------------------------------------------
// Temporary directory, removed with everything in it unless SG_KEEP_TEST_DIRS is set.
class temp_dir {
public:
    temp_dir();
    ~temp_dir();
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

// ---------------------------------------------------------------------------------------------
// Owned file descriptor.
class unique_fd {
public:
    unique_fd() = default;
    explicit unique_fd(int fd) : fd_(fd) {}
    ~unique_fd() { reset(); }
    unique_fd(unique_fd&& o) noexcept : fd_(o.release()) {}
    unique_fd& operator=(unique_fd&& o) noexcept {
        if (this != &o) { reset(); fd_ = o.release(); }
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    int release() { int f = fd_; fd_ = -1; return f; }
    void reset(int fd = -1);

private:
    int fd_ = -1;
};

// A connected AF_UNIX stream socket pair (both ends close-on-exec in this process).
std::pair<unique_fd, unique_fd> socket_pair();

// ---------------------------------------------------------------------------------------------
// A child process. stdin is /dev/null and stdout/stderr go to <log_dir>/<name>.stdout/.stderr,
// unless `stdio_fd` is given: then stdin and stdout are that fd (stderr still goes to the file).
// The environment is ours plus `env`, minus the service proxy's fallback variables
// (IOTHUB_CONNECTION_STRING, STREAMING_TARGET_DEVICE, PROXY_PORT) and outbound proxy variables
// (HTTPS_PROXY, NO_PROXY, lower case too) so a developer's shell cannot change what a test runs.
class process {
public:
    process(std::string name, std::vector<std::string> argv, const std::filesystem::path& log_dir,
            env_list env = {}, int stdio_fd = -1);
    ~process();  // SIGKILL + reap if still running; prints logs if the test failed
    process(const process&) = delete;
    process& operator=(const process&) = delete;

    pid_t pid() const { return pid_; }
    const std::string& name() const { return name_; }
    bool running();
    void kill(int sig);
    // Exit code (128 + signal number if killed by a signal), or nullopt if still running after
    // `timeout`.
    std::optional<int> wait_exit(millis timeout);
    std::optional<int> exit_code() const { return exit_code_; }
    std::string stdout_text() const;
    std::string stderr_text() const;
    // "name (pid N, running|exited with N, stderr in …)" for INFO() messages (the logs themselves
    // are printed when the process is torn down in a failed test).
    std::string describe();

private:
    bool reap(bool block);
    void print_logs();

    std::string name_;
    std::vector<std::string> argv_;
    std::filesystem::path stdout_path_;
    std::filesystem::path stderr_path_;
    pid_t pid_ = -1;
    std::optional<int> exit_code_;
};

// Runs a command to completion (stdout and stderr captured through pipes).
struct run_result {
    std::optional<int> exit_code;  // nullopt if it had to be killed after the timeout
    std::string out;
    std::string err;
};
run_result run(const std::vector<std::string>& argv, const env_list& env = {},
               millis timeout = k_command_timeout);
// Command line, exit code, stdout and stderr: for INFO() messages.
std::string describe(const std::vector<std::string>& argv, const run_result& r);

// ---------------------------------------------------------------------------------------------
// Loopback networking.

// A port that was free a moment ago (bind 127.0.0.1:0, read it, close).
int free_port();
// True if some socket is in LISTEN state on `port` (reads /proc/net/tcp{,6}; never connects, so
// probing the service proxy does not open a stream).
bool port_listening(int port);
bool wait_for_port(int port, millis timeout = k_start_timeout);
// Connects to 127.0.0.1:port (blocking socket, close-on-exec); throws on failure.
unique_fd connect_tcp(int port);

// Connects to ipv4:port without throwing, giving up after `timeout`: the connected (blocking)
// socket, or the errno (ETIMEDOUT after the timeout) and how long the attempt took.
struct connect_result {
    unique_fd fd;
    int error = 0;
    millis elapsed{0};
    bool ok() const { return error == 0; }
    std::string describe() const;  // "connected" or the strerror, with the time taken
};
connect_result try_connect(const std::string& ipv4, int port, millis timeout = 5s);

// Reads and discards until the peer closes (EOF or an error such as a reset) or `timeout` passes.
struct closed_result {
    bool closed = false;       // EOF or error before the timeout
    std::string how;           // "EOF", "recv: Connection reset by peer", "timed out"
    std::size_t received = 0;  // bytes discarded on the way
    millis elapsed{0};
};
closed_result wait_closed(int fd, millis timeout);

// ---------------------------------------------------------------------------------------------
// /proc probes (Linux).

// One row of /proc/net/tcp{,6}, fields as the kernel writes them (hex addresses and state).
struct tcp_row {
    std::string local, remote, state, queues, inode;  // queues: "tx_queue:rx_queue"
};
// Every row of {proc_net}/tcp and {proc_net}/tcp6 ("/proc/net", or "/proc/PID/net" for a
// process's network namespace).
std::vector<tcp_row> read_tcp_tables(const std::string& proc_net);

// Bytes the kernel holds in the send and receive queues (tx_queue + rx_queue of /proc/net/tcp{,6})
// of every connected TCP socket whose local or remote port is one of `ports`, in this network
// namespace: what a chain of connections buffers outside the processes.
std::size_t tcp_queued_bytes(const std::vector<int>& ports);

// VmRSS of a process in KiB; nullopt once it is gone.
std::optional<long> rss_kib(pid_t pid);
// Number of open file descriptors (entries of /proc/PID/fd); -1 once it is gone.
int open_fd_count(pid_t pid);
// One line per open descriptor: "fd -> target", TCP sockets with their addresses and state
// (from /proc/PID/net/tcp{,6}): for messages about descriptor leaks.
std::string describe_fds(pid_t pid);
// "HH:MM:SS.mmm" in UTC, as the processes' logs write it.
std::string utc_time_now();

// Diagnosis of descriptor leaks: a background thread records every TCP socket of this network
// namespace (addresses, state, when first and last seen) and which of the watched processes held
// it, so a socket whose connection is long gone (no longer in /proc/net/tcp) can still be traced
// to the connection it was and the process at its other end.
class socket_history {
public:
    // owners: (name, pid) of the processes to attribute sockets to; called on every poll, so
    // restarted processes are followed.
    using owners_fn = std::function<std::vector<std::pair<std::string, pid_t>>()>;
    explicit socket_history(owners_fn owners);
    ~socket_history();
    socket_history(const socket_history&) = delete;
    socket_history& operator=(const socket_history&) = delete;
    // For each socket descriptor of pid that is no longer a TCP connection: what it was.
    std::string explain_closed_sockets(pid_t pid);

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// True if a socket is in LISTEN state on `port` in the network namespace of process `pid`
// (reads /proc/PID/net/tcp{,6}).
bool port_listening_in(pid_t pid, int port);

// A listening socket on 127.0.0.1:<ephemeral>.
class tcp_listener {
public:
    tcp_listener();
    int port() const { return port_; }
    int fd() const { return fd_.get(); }
    // Waits up to `timeout` for a connection; an empty unique_fd on timeout or once `stop` is
    // requested.
    unique_fd accept(millis timeout, std::stop_token stop = {});

private:
    unique_fd fd_;
    int port_ = 0;
};

// Full-duplex transfer on one socket: sends `out` while receiving, hashing what arrives.
struct transfer_options {
    bool shutdown_after_send = false;               // shutdown(SHUT_WR) once everything is sent
    std::optional<std::size_t> receive_exactly{};   // stop after this many bytes (else until EOF)
    millis timeout = k_transfer_timeout;
    std::stop_token stop{};                         // gives up early when stop is requested
};
struct transfer_result {
    std::string error;  // empty on success
    std::size_t sent = 0;
    std::size_t received = 0;
    std::string received_sha256;
    bool ok() const { return error.empty(); }
};
transfer_result transfer(int fd, std::span<const unsigned char> out, const transfer_options& opt);

// A TCP echo server on 127.0.0.1 (one thread per connection) for stream tests.
class echo_server {
public:
    echo_server();
    ~echo_server();  // stops accepting, closes connections, joins threads
    echo_server(const echo_server&) = delete;
    echo_server& operator=(const echo_server&) = delete;
    int port() const;
    int connections_accepted() const;
    int connections_open() const;  // accepted and not yet closed

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// Connects to a service proxy's local port whose device forwards to an echo target, and
// round-trips `probe` random bytes: the stream is established end to end. REQUIREs success.
unique_fd open_echo_stream(int port, std::size_t probe = 4096);

// ---------------------------------------------------------------------------------------------
// The relay on a fresh data dir and a free loopback port.
struct relay_config {
    std::vector<std::string> args{};    // extra options, e.g. {"--ping-interval", "1"}
    std::vector<std::string> prefix{};  // command prefix, e.g. {"ip", "netns", "exec", "ns"}
    std::string listen_host = "127.0.0.1";
    // Copies ca.pem and ca.key from this data directory before the first start: relays that
    // share a CA (the nodes of a cluster) issue their certificates from it.
    std::filesystem::path ca_from{};
};

class relay_fixture {
public:
    relay_fixture();
    explicit relay_fixture(relay_config config);
    relay_fixture(const relay_fixture&) = delete;
    relay_fixture& operator=(const relay_fixture&) = delete;

    const temp_dir& dir() const { return dir_; }
    const std::filesystem::path& data_dir() const { return data_dir_; }
    std::filesystem::path ca_file() const { return data_dir_ / "ca.pem"; }
    int port() const { return port_; }
    const std::string& listen_host() const { return config_.listen_host; }
    process& relay() { return *relay_; }

    // Sends `sig` to the relay and waits up to `timeout` for it to exit: its exit code (128 + N
    // when killed by signal N), or nullopt if it is still running.
    std::optional<int> stop(int sig = SIGKILL, millis timeout = k_start_timeout);
    // Starts the relay again (same data dir, port and options) after stop(); REQUIREs that it
    // listens.
    void start();
    // The relay's port is in LISTEN state (seen from the relay's network namespace).
    bool listening();

    // `streamgate-relay --data-dir D <args...>`
    run_result admin(const std::vector<std::string>& args);
    // Creates the device (REQUIREs success) and returns its connection string.
    std::string create_device(const std::string& id);
    // The "service" policy's connection string (REQUIREs success).
    std::string service_connection_string();
    // `device-identity show` says "connectionState": "Connected".
    bool device_connected(const std::string& id);
    // The device's "connectionState" ("Connected", "Disconnected"), or "" if `show` failed.
    std::string connection_state(const std::string& id);
    // Waits until `id` is Connected, giving up early if `device_side` or the relay exits (a relay
    // that exited is reported as a failed CHECK).
    bool wait_device_connected(const std::string& id, process& device_side,
                               millis timeout = k_connect_timeout);

    // Starts a process whose logs live in this fixture's directory.
    std::unique_ptr<process> spawn(const std::string& name, std::vector<std::string> argv,
                                   int stdio_fd = -1);

private:
    relay_config config_;
    temp_dir dir_;
    std::filesystem::path data_dir_;
    int port_ = 0;
    std::unique_ptr<process> relay_;
};

// `streamgate-service-proxy --ca-file D/ca.pem <options…> --stdio "$SVC" DEVICE` with its stdin and
// stdout on `fd` (one end of socket_pair()).
std::unique_ptr<process> spawn_stdio_service_proxy(relay_fixture& relay,
                                                   const std::string& service_connection_string,
                                                   const std::string& device_id, int fd,
                                                   const std::vector<std::string>& options = {});

// Replaces the SharedAccessKey=… of a connection string with a different valid key
// (base64 of 32 random bytes).
std::string with_wrong_key(const std::string& connection_string);

// ---------------------------------------------------------------------------------------------
// A private sshd on a free loopback port, with its own ed25519 host key and one ed25519 user key
// (OpenSSH format, no passphrase) in authorized_keys, for the user running the tests.
class sshd_fixture {
public:
    sshd_fixture();
    // sshd run through a command prefix (e.g. `ip netns exec NS`), still on 127.0.0.1 of the
    // network namespace it runs in.
    explicit sshd_fixture(std::vector<std::string> prefix);
    sshd_fixture(const sshd_fixture&) = delete;
    sshd_fixture& operator=(const sshd_fixture&) = delete;

    const temp_dir& dir() const { return dir_; }
    int port() const { return port_; }
    const std::string& user() const { return user_; }
    const std::filesystem::path& user_key() const { return user_key_; }
    std::filesystem::path user_public_key() const { return user_key_.string() + ".pub"; }
    // The raw host public key blob (what the SSH handshake presents), to prove that a session
    // reached this sshd.
    bytes host_key_blob() const;
    process& sshd() { return *sshd_; }

private:
    temp_dir dir_;
    int port_ = 0;
    std::string user_;
    std::filesystem::path host_key_;
    std::filesystem::path user_key_;
    std::unique_ptr<process> sshd_;
};

// ---------------------------------------------------------------------------------------------
// A relay with one device whose device proxy forwards to a target, plus (optionally) a service
// proxy listening on a local port for that device.
struct tunnel_options {
    std::string target_host = "127.0.0.1";
    int target_port = 0;
    std::vector<std::string> device_proxy_args{};  // appended after the positionals (--service …)
    bool start_service_proxy = true;
    std::vector<std::string> service_proxy_args{};  // options placed before the positionals
    std::vector<std::string> relay_args{};          // extra relay options (--ping-interval …)
};

class tunnel_fixture {
public:
    explicit tunnel_fixture(const tunnel_options& opt);

    relay_fixture relay;
    const std::string device_id = "tunnel-device";
    std::string device_connection_string;
    std::string service_connection_string;
    std::unique_ptr<process> device_proxy;
    std::unique_ptr<process> service_proxy;  // null unless start_service_proxy
    int local_port = 0;                      // the service proxy's port

    // A `--stdio` service proxy for this tunnel's device with stdin/stdout on `fd`.
    std::unique_ptr<process> stdio_service_proxy(int fd,
                                                 const std::vector<std::string>& options = {});

    // Starts the device proxy again with the same command line, replacing `device_proxy` (kill
    // it first); does not wait for it to connect.
    void respawn_device_proxy();
    // Starts the service proxy again on the same local port; REQUIREs that it listens.
    void respawn_service_proxy();

    std::vector<std::string> device_proxy_argv;
    std::vector<std::string> service_proxy_argv;  // empty unless start_service_proxy
};

// ---------------------------------------------------------------------------------------------
// A network namespace (`ip netns add NAME`), deleted on destruction (with the interfaces in it).
class netns {
public:
    // Throws std::runtime_error (with the output of `ip`) if it cannot be created.
    explicit netns(std::string name);
    ~netns();
    netns(const netns&) = delete;
    netns& operator=(const netns&) = delete;
    const std::string& name() const { return name_; }
    // {"ip", "netns", "exec", NAME}: prefix for processes that must run inside.
    std::vector<std::string> prefix() const { return {"ip", "netns", "exec", name_}; }
    // `ip -n NAME <args…>`; throws with the command's stderr when it fails.
    void ip(const std::vector<std::string>& args) const;
    // Runs `fn` on a thread that entered this namespace (setns): sockets made there live in the
    // namespace. Exceptions from `fn` are rethrown here.
    void run_inside(const std::function<void()>& fn) const;

private:
    std::string name_;
};

}  // namespace sgit
