#pragma once
// A libpq connection for the PostgreSQL registry (internal to sg_registry): parameterised
// statements only, errors that name the database (never its password), and a reconnect when
// the server went away since the last use.
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct pg_conn;
struct pg_result;

namespace sg::relay::pg {

// One statement's result rows, as text.
class result {
public:
    explicit result(pg_result* r = nullptr) : r_(r) {}
    int rows() const;
    std::string text(int row, int col) const;
    std::int64_t integer(int row, int col) const;
    bool boolean(int row, int col) const { return text(row, col) == "t"; }
    // Rows the statement inserted, updated or deleted.
    long affected() const;

private:
    struct clear {
        void operator()(pg_result* r) const;
    };
    std::unique_ptr<pg_result, clear> r_;
};

class connection {
public:
    // Connects at once (throws registry_unavailable when the server cannot be reached).
    explicit connection(std::string url);
    ~connection();
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    // Runs one statement with $1..$n bound as text. A failure throws: registry_unavailable when
    // the connection is lost (it reconnects on the next call), std::runtime_error otherwise.
    result exec(const char* sql, const std::vector<std::string>& params, const char* what);
    result exec(const char* sql, const char* what) { return exec(sql, {}, what); }
    // Several statements without parameters (a migration), as one simple query.
    result script(const char* sql, const char* what);

    // Before a statement: reconnects if the server closed the connection since the last use
    // (a restart), so the first statement after a restart does not fail.
    void ensure_open();
    bool in_transaction() const;

    // The server process serving this connection (notifications carry it), 0 when closed.
    // Safe to read from any thread.
    int backend_pid() const { return pid_; }
    // LISTEN support: reads what the server sent (never blocks) and appends the sending backend
    // pid of each notification received; false when the connection is lost.
    bool poll_notifications(std::vector<int>& sender_pids);
    struct notification {
        int sender_pid = 0;
        std::string channel, payload;
    };
    // The same with each notification's channel and payload.
    bool poll_notifications(std::vector<notification>& received);

    const std::string& redacted_url() const { return redacted_; }
    [[noreturn]] void fail(const char* what, std::string_view detail, bool lost) const;

private:
    void connect();
    result check(pg_result* raw, const char* what);
    std::string url_, redacted_;
    pg_conn* conn_ = nullptr;
    std::atomic<int> pid_{0};
};

} // namespace sg::relay::pg
