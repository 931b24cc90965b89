#include "relay/pg_connection.hpp"

#include <libpq-fe.h>
#include <poll.h>

#include <cstdlib>
#include <stdexcept>
#include "relay/registry.hpp"

namespace sg::relay::pg {

namespace {

// libpq's messages end in a newline and may span lines; one line reads better in a log.
std::string one_line(const char* text)
{
    std::string out = text ? text : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
        out.pop_back();
    for (auto& c : out)
        if (c == '\n' || c == '\t')
            c = ' ';
    return out;
}

// SQLSTATE classes that mean "the server is not there right now", not "this statement is wrong":
// 08 connection exception, 57 operator intervention (admin shutdown, starting up, crash
// recovery), 53 insufficient resources (too many connections).
bool is_unavailable_state(const char* state)
{
    if (!state)
        return false;
    std::string_view s(state);
    return s.starts_with("08") || s.starts_with("57") || s.starts_with("53");
}

} // namespace

int result::rows() const { return r_ ? PQntuples(r_.get()) : 0; }

std::string result::text(int row, int col) const
{
    return std::string(PQgetvalue(r_.get(), row, col), static_cast<std::size_t>(PQgetlength(r_.get(), row, col)));
}

std::int64_t result::integer(int row, int col) const { return std::strtoll(PQgetvalue(r_.get(), row, col), nullptr, 10); }

long result::affected() const { return r_ ? std::strtol(PQcmdTuples(r_.get()), nullptr, 10) : 0; }

void result::clear::operator()(pg_result* r) const { PQclear(r); }

connection::connection(std::string url) : url_(std::move(url)), redacted_(redact_database_url(url_)) { connect(); }

connection::~connection()
{
    if (conn_)
        PQfinish(conn_);
}

void connection::connect()
{
    if (conn_)
        PQfinish(conn_);
    conn_ = nullptr;
    pid_ = 0;
    // Defaults first: the URL's own parameters (expanded from dbname) override them. A server
    // that stops answering fails a statement within tcp_user_timeout instead of hanging a thread.
    const char* keys[] = {"connect_timeout", "tcp_user_timeout", "keepalives_idle", "application_name", "dbname",
                          nullptr};
    const char* values[] = {"5", "10000", "30", "streamgate-relay", url_.c_str(), nullptr};
    conn_ = PQconnectdbParams(keys, values, 1);
    if (!conn_)
        fail("connect", "out of memory", true);
    if (PQstatus(conn_) != CONNECTION_OK)
        fail("connect", one_line(PQerrorMessage(conn_)), true);
    // Quiet: NOTICEs (e.g. "relation already exists, skipping") are not errors.
    PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
    pid_ = PQbackendPID(conn_);
}

void connection::ensure_open()
{
    if (conn_ && PQstatus(conn_) == CONNECTION_OK) {
        // An idle connection has nothing to read unless the server sent something: a FATAL
        // before a shutdown, or end of file after it. Reading it now turns the status bad.
        pollfd p{PQsocket(conn_), POLLIN, 0};
        if (::poll(&p, 1, 0) > 0)
            PQconsumeInput(conn_);
        while (PGnotify* n = PQnotifies(conn_))
            PQfreemem(n);
        if (PQstatus(conn_) == CONNECTION_OK)
            return;
    }
    connect();
}

bool connection::in_transaction() const
{
    return conn_ && PQstatus(conn_) == CONNECTION_OK && PQtransactionStatus(conn_) != PQTRANS_IDLE;
}

result connection::exec(const char* sql, const std::vector<std::string>& params, const char* what)
{
    if (!in_transaction())
        ensure_open();
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params)
        values.push_back(p.c_str());
    return check(PQexecParams(conn_, sql, static_cast<int>(values.size()), nullptr, values.data(), nullptr, nullptr, 0),
                 what);
}

result connection::script(const char* sql, const char* what)
{
    if (!in_transaction())
        ensure_open();
    return check(PQexec(conn_, sql), what);
}

result connection::check(pg_result* raw, const char* what)
{
    result r(raw);
    auto status = raw ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)
        return r;
    const char* state = raw ? PQresultErrorField(raw, PG_DIAG_SQLSTATE) : nullptr;
    bool lost = PQstatus(conn_) != CONNECTION_OK || is_unavailable_state(state);
    std::string message = one_line(raw ? PQresultErrorMessage(raw) : PQerrorMessage(conn_));
    if (message.empty())
        message = one_line(PQerrorMessage(conn_));
    if (state && !lost)
        message += " (SQLSTATE " + std::string(state) + ")";
    fail(what, message, lost);
}

bool connection::poll_notifications(std::vector<int>& sender_pids)
{
    if (!conn_ || PQstatus(conn_) != CONNECTION_OK)
        return false;
    if (!PQconsumeInput(conn_) || PQstatus(conn_) != CONNECTION_OK)
        return false;
    while (PGnotify* n = PQnotifies(conn_)) {
        sender_pids.push_back(n->be_pid);
        PQfreemem(n);
    }
    return true;
}

bool connection::poll_notifications(std::vector<notification>& received)
{
    if (!conn_ || PQstatus(conn_) != CONNECTION_OK)
        return false;
    if (!PQconsumeInput(conn_) || PQstatus(conn_) != CONNECTION_OK)
        return false;
    while (PGnotify* n = PQnotifies(conn_)) {
        received.push_back({n->be_pid, n->relname ? n->relname : "", n->extra ? n->extra : ""});
        PQfreemem(n);
    }
    return true;
}

void connection::fail(const char* what, std::string_view detail, bool lost) const
{
    std::string message = "registry " + redacted_ + ": " + what + ": " + std::string(detail);
    if (lost)
        throw registry_unavailable(message + " (database unavailable)");
    throw std::runtime_error(message);
}

} // namespace sg::relay::pg
