// A private PostgreSQL 15 server for tests: initdb in a temporary directory, the postmaster on a
// free 127.0.0.1 port (Unix socket in the same directory), killed with the test binary.
//
// Auth: the test role connects over TCP with a password (scram-sha-256), as a deployment would;
// the fixture itself creates roles and databases over the Unix socket (trust, socket in a
// private directory). As root, initdb and postgres run as the `postgres` user (initdb refuses
// root): the child drops privileges itself, so the fixture holds the postmaster's own pid and
// can signal it (SIGQUIT = pg_ctl stop -m immediate).
//
// Binaries: /usr/lib/postgresql/15/bin (Debian postgresql-15), or $SG_PG_BIN. Used by the unit
// tests (registry contract) and the integration tests; it links no project code.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace sgtest {

class pg_server {
public:
    // initdb + start + wait until it accepts connections. Throws std::runtime_error with the
    // server's log when anything fails.
    pg_server();
    ~pg_server(); // SIGQUIT, reap, remove the directory (kept with SG_KEEP_TEST_DIRS=1)
    pg_server(const pg_server&) = delete;
    pg_server& operator=(const pg_server&) = delete;

    int port() const { return port_; }
    const std::string& user() const { return user_; }
    const std::string& password() const { return password_; }

    // Creates database `name` owned by the test role (not a superuser) and returns
    // postgresql://streamgate:PASSWORD@127.0.0.1:PORT/NAME.
    std::string create_database(const std::string& name);
    std::string url(const std::string& database) const;
    // Runs SQL as the superuser on `database` (psql -c); returns its stdout. Throws on failure.
    std::string psql(const std::string& database, const std::string& sql);

    // Stops the server: "immediate" (SIGQUIT, like pg_ctl stop -m immediate), "fast" (SIGINT).
    void stop(const std::string& mode = "immediate");
    // Starts it again on the same directory and port; waits until it accepts connections.
    void start();
    bool running();
    std::string log_tail(std::size_t max_chars = 4000) const;

private:
    void wait_ready(std::chrono::milliseconds timeout);

    std::filesystem::path dir_, data_, log_;
    std::string bin_;
    int port_ = 0;
    std::string user_ = "streamgate", password_;
    pid_t pid_ = -1;
};

} // namespace sgtest
