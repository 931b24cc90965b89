// The embedded registry: one SQLite file shared by the relay and the admin commands run beside
// it, so every write is its own IMMEDIATE transaction and SQLITE_BUSY is absorbed by busy_timeout.
#include "relay/registry.hpp"
#include "relay/registry_util.hpp"

#include "common/crypto.hpp"

#include <sqlite3.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sg::relay {

namespace {

constexpr int schema_version = 3;

// Created in one transaction with the default policies, so a half-initialised file never exists.
constexpr const char* schema_sql = R"sql(
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY NOT NULL, generation_id TEXT NOT NULL, etag TEXT NOT NULL,
    status TEXT NOT NULL, status_reason TEXT NOT NULL, auth_type TEXT NOT NULL,
    primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
    primary_thumbprint TEXT NOT NULL, secondary_thumbprint TEXT NOT NULL,
    connected INTEGER NOT NULL, connection_state_updated_time TEXT NOT NULL,
    status_updated_time TEXT NOT NULL, last_activity_time TEXT NOT NULL
);
CREATE TABLE policies (
    name TEXT PRIMARY KEY NOT NULL, primary_key TEXT NOT NULL, secondary_key TEXT NOT NULL,
    permissions INTEGER NOT NULL
);
CREATE TABLE settings (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);
)sql";

// Version 2: who changed the registry, so a relay can log changes that admin commands make.
constexpr const char* audit_schema_sql = R"sql(
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, subject TEXT NOT NULL, detail TEXT NOT NULL
);
)sql";

// Version 3: the uploaded device CAs, which lived in <data-dir>/device-cas/ before.
constexpr const char* device_cas_schema_sql = R"sql(
CREATE TABLE device_cas (
    name TEXT PRIMARY KEY NOT NULL, pem TEXT NOT NULL, thumbprint TEXT NOT NULL, added_time TEXT NOT NULL
);
)sql";

constexpr const char* device_columns =
    "device_id, generation_id, etag, status, status_reason, auth_type, primary_key, secondary_key, "
    "primary_thumbprint, secondary_thumbprint, connected, connection_state_updated_time, "
    "status_updated_time, last_activity_time";
// Built once: the device look-up of every stream request used to build its SQL each time.
const std::string select_devices_sql = std::string("SELECT ") + device_columns + " FROM devices ORDER BY device_id";
const std::string find_device_sql = std::string("SELECT ") + device_columns + " FROM devices WHERE device_id = ?1";
const std::string insert_device_sql = std::string("INSERT INTO devices (") + device_columns +
                                      ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

// Creates the missing directories of `dir` as 0700: they will hold key material.
void create_private_dirs(const std::filesystem::path& dir)
{
    if (dir.empty() || std::filesystem::exists(dir)) return;
    create_private_dirs(dir.parent_path());
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        throw std::runtime_error("registry: cannot create directory " + dir.string() + ": " +
                                 std::strerror(errno));
}

// Prepared statements kept for reuse: compiling the SQL cost more than running it (the SAS
// policy and device look-ups of every stream request). Used under the registry's mutex.
class statement_cache {
public:
    statement_cache() = default;
    statement_cache(const statement_cache&) = delete;
    statement_cache& operator=(const statement_cache&) = delete;
    ~statement_cache() { clear(); }
    // A prepared statement for sql that nobody uses, or null.
    sqlite3_stmt* take(const std::string& sql)
    {
        auto it = idle_.find(sql);
        return it == idle_.end() ? nullptr : std::exchange(it->second, nullptr);
    }
    // Returns a reset statement; false when one for sql is kept already (the caller finalizes).
    bool give(const std::string& sql, sqlite3_stmt* stmt)
    {
        auto& slot = idle_[sql];
        if (slot)
            return false;
        slot = stmt;
        return true;
    }
    void clear()
    {
        for (auto& [sql, stmt] : idle_)
            sqlite3_finalize(stmt);
        idle_.clear();
    }

private:
    std::unordered_map<std::string, sqlite3_stmt*> idle_;
};

class statement {
public:
    statement(sqlite3* db, const char* sql, statement_cache& cache) : db_(db), cache_(&cache), sql_(sql)
    {
        stmt_ = cache_->take(sql_);
        if (!stmt_ && sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK)
            stmt_ = nullptr;
    }
    ~statement()
    {
        if (!stmt_)
            return;
        sqlite3_reset(stmt_);
        sqlite3_clear_bindings(stmt_);
        if (!cache_->give(sql_, stmt_))
            sqlite3_finalize(stmt_);
    }
    statement(statement&& o) noexcept
        : db_(o.db_), cache_(o.cache_), sql_(std::move(o.sql_)), stmt_(std::exchange(o.stmt_, nullptr))
    {
    }
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;

    bool ok() const { return stmt_ != nullptr; }
    statement& bind(int i, std::string_view t)
    {
        sqlite3_bind_text(stmt_, i, t.data(), static_cast<int>(t.size()), SQLITE_TRANSIENT);
        return *this;
    }
    statement& bind(int i, std::int64_t v) { sqlite3_bind_int64(stmt_, i, v); return *this; }
    int step() { return stmt_ ? sqlite3_step(stmt_) : sqlite3_errcode(db_); }
    std::string text(int col) const
    {
        auto p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
        return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col))) : std::string();
    }
    std::int64_t integer(int col) const { return sqlite3_column_int64(stmt_, col); }

private:
    sqlite3* db_;
    statement_cache* cache_;
    std::string sql_;
    sqlite3_stmt* stmt_ = nullptr;
};

device_identity read_device(const statement& s)
{
    device_identity d;
    d.device_id = s.text(0), d.generation_id = s.text(1), d.etag = s.text(2);
    d.status = parse_device_status(s.text(3)).value_or(device_status::disabled);
    d.status_reason = s.text(4);
    d.authentication = parse_auth_type(s.text(5)).value_or(auth_type::sas);
    d.primary_key = s.text(6), d.secondary_key = s.text(7);
    d.primary_thumbprint = s.text(8), d.secondary_thumbprint = s.text(9);
    d.connected = s.integer(10) != 0;
    d.connection_state_updated_time = s.text(11), d.status_updated_time = s.text(12);
    d.last_activity_time = s.text(13);
    return d;
}

class sqlite_registry final : public registry {
public:
    explicit sqlite_registry(std::filesystem::path file) : file_(std::move(file)) { open(); }

    std::optional<device_identity> find_device(std::string_view device_id) override
    {
        std::lock_guard lock(mutex_);
        return find_locked(device_id);
    }

    std::vector<device_identity> list_devices() override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare(select_devices_sql.c_str());
        std::vector<device_identity> out;
        for_each_row(s, "list devices", [&] { out.push_back(read_device(s)); });
        return out;
    }

    registry_result create_device(device_identity& device) override
    {
        std::lock_guard lock(mutex_);
        device_identity d = device;
        detail::prepare_new_device(d);
        const std::string& now = d.status_updated_time;

        auto s = prepare(insert_device_sql.c_str());
        s.bind(1, d.device_id).bind(2, d.generation_id).bind(3, d.etag).bind(4, to_string(d.status));
        s.bind(5, d.status_reason).bind(6, to_string(d.authentication));
        s.bind(7, d.primary_key).bind(8, d.secondary_key);
        s.bind(9, d.primary_thumbprint).bind(10, d.secondary_thumbprint);
        s.bind(11, std::int64_t{0}).bind(12, now).bind(13, now).bind(14, now);
        int rc = s.step();
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) // extended result codes are on
            return registry_result::already_exists;
        check_done(rc, "create device");
        device = std::move(d);
        return registry_result::ok;
    }

    registry_result update_device(device_identity& device, std::string_view if_match) override
    {
        std::lock_guard lock(mutex_);
        transaction tx(*this);
        auto stored = find_locked(device.device_id);
        if (!stored) return registry_result::not_found;
        if (!detail::etag_matches(if_match, stored->etag)) return registry_result::etag_mismatch;

        device_identity d = device;
        detail::prepare_update(d, *stored);

        auto s = prepare("UPDATE devices SET etag = ?2, status = ?3, status_reason = ?4, auth_type = ?5, "
                         "primary_key = ?6, secondary_key = ?7, primary_thumbprint = ?8, "
                         "secondary_thumbprint = ?9, status_updated_time = ?10 WHERE device_id = ?1");
        s.bind(1, d.device_id).bind(2, d.etag).bind(3, to_string(d.status)).bind(4, d.status_reason);
        s.bind(5, to_string(d.authentication)).bind(6, d.primary_key).bind(7, d.secondary_key);
        s.bind(8, d.primary_thumbprint).bind(9, d.secondary_thumbprint).bind(10, d.status_updated_time);
        check_done(s.step(), "update device");
        tx.commit();
        device = std::move(d);
        return registry_result::ok;
    }

    registry_result delete_device(std::string_view device_id, std::string_view if_match) override
    {
        std::lock_guard lock(mutex_);
        transaction tx(*this);
        auto stored = find_locked(device_id);
        if (!stored) return registry_result::not_found;
        if (!detail::etag_matches(if_match, stored->etag)) return registry_result::etag_mismatch;
        auto s = prepare("DELETE FROM devices WHERE device_id = ?1");
        s.bind(1, device_id);
        check_done(s.step(), "delete device");
        tx.commit();
        return registry_result::ok;
    }

    void set_connection_state(std::string_view device_id, bool connected) override
    {
        std::lock_guard lock(mutex_);
        const std::string now = utc_now_iso8601();
        auto s = prepare("UPDATE devices SET connected = ?2, connection_state_updated_time = ?3, "
                         "last_activity_time = ?3 WHERE device_id = ?1");
        s.bind(1, device_id).bind(2, std::int64_t{connected ? 1 : 0}).bind(3, now);
        check_done(s.step(), "set connection state");
    }

    void mark_all_disconnected() override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("UPDATE devices SET connected = 0, connection_state_updated_time = ?1 WHERE connected <> 0");
        s.bind(1, utc_now_iso8601());
        check_done(s.step(), "mark devices disconnected");
    }

    std::optional<access_policy> find_policy(std::string_view name) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("SELECT name, primary_key, secondary_key, permissions FROM policies WHERE name = ?1");
        s.bind(1, name);
        std::optional<access_policy> out;
        for_each_row(s, "find policy", [&] { out = read_policy(s); });
        return out;
    }

    std::vector<access_policy> list_policies() override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("SELECT name, primary_key, secondary_key, permissions FROM policies ORDER BY name");
        std::vector<access_policy> out;
        for_each_row(s, "list policies", [&] { out.push_back(read_policy(s)); });
        return out;
    }

    std::optional<std::string> get_setting(std::string_view key) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("SELECT value FROM settings WHERE key = ?1");
        s.bind(1, key);
        std::optional<std::string> out;
        for_each_row(s, "read setting", [&] { out = s.text(0); });
        return out;
    }

    void set_setting(std::string_view key, std::string_view value) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("INSERT INTO settings (key, value) VALUES (?1, ?2) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value");
        s.bind(1, key).bind(2, value);
        check_done(s.step(), "write setting");
    }

    void append_audit(const audit_entry& e) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("INSERT INTO audit (time, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)");
        s.bind(1, utc_now_iso8601()).bind(2, e.actor).bind(3, e.action).bind(4, e.subject).bind(5, e.detail);
        check_done(s.step(), "append audit entry");
    }

    std::vector<audit_entry> audit_after(std::int64_t id, std::size_t max_entries) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("SELECT id, time, actor, action, subject, detail FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2");
        s.bind(1, id).bind(2, static_cast<std::int64_t>(max_entries));
        std::vector<audit_entry> out;
        for_each_row(s, "read audit", [&] {
            out.push_back({s.integer(0), s.text(1), s.text(2), s.text(3), s.text(4), s.text(5)});
        });
        return out;
    }

    std::int64_t last_audit_id() override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("SELECT COALESCE(MAX(id), 0) FROM audit");
        if (s.step() != SQLITE_ROW) fail("read audit");
        return s.integer(0);
    }

    registry_result add_device_ca(device_ca& ca, bool replace) override
    {
        std::lock_guard lock(mutex_);
        device_ca c = ca;
        if (c.added_time.empty())
            c.added_time = utc_now_iso8601();
        int rc = insert_device_ca(c, replace);
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY)
            return registry_result::already_exists;
        check_done(rc, "add device CA");
        ca = std::move(c);
        return registry_result::ok;
    }

    std::optional<device_ca> find_device_ca(std::string_view name) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("SELECT name, pem, thumbprint, added_time FROM device_cas WHERE name = ?1");
        s.bind(1, name);
        std::optional<device_ca> out;
        for_each_row(s, "find device CA", [&] { out = read_device_ca(s); });
        return out;
    }

    std::vector<device_ca> list_device_cas() override
    {
        std::lock_guard lock(mutex_);
        return list_device_cas_locked("list device CAs");
    }

    registry_result delete_device_ca(std::string_view name) override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("DELETE FROM device_cas WHERE name = ?1");
        s.bind(1, name);
        check_done(s.step(), "delete device CA");
        return sqlite3_changes(db()) > 0 ? registry_result::ok : registry_result::not_found;
    }

    std::uint64_t external_change_counter() override
    {
        std::lock_guard lock(mutex_);
        auto s = prepare("PRAGMA data_version");
        int rc = s.step();
        if (rc != SQLITE_ROW) fail("read data_version");
        return static_cast<std::uint64_t>(s.integer(0));
    }

    registry_snapshot export_all() override
    {
        std::lock_guard lock(mutex_);
        transaction tx(*this); // one consistent view
        registry_snapshot out;
        auto d = prepare(select_devices_sql.c_str());
        for_each_row(d, "export devices", [&] { out.devices.push_back(read_device(d)); });
        auto p = prepare("SELECT name, primary_key, secondary_key, permissions FROM policies ORDER BY name");
        for_each_row(p, "export policies", [&] { out.policies.push_back(read_policy(p)); });
        auto s = prepare("SELECT key, value FROM settings ORDER BY key");
        for_each_row(s, "export settings", [&] { out.settings.emplace_back(s.text(0), s.text(1)); });
        auto a = prepare("SELECT id, time, actor, action, subject, detail FROM audit ORDER BY id");
        for_each_row(a, "export audit", [&] {
            out.audit.push_back({a.integer(0), a.text(1), a.text(2), a.text(3), a.text(4), a.text(5)});
        });
        out.device_cas = list_device_cas_locked("export device CAs");
        tx.commit();
        return out;
    }

    void import_all(const registry_snapshot& snap) override
    {
        std::lock_guard lock(mutex_);
        transaction tx(*this);
        exec("DELETE FROM devices; DELETE FROM policies; DELETE FROM settings; DELETE FROM audit; "
             "DELETE FROM device_cas;", "clear registry");
        for (const auto& d : snap.devices) {
            auto s = prepare(insert_device_sql.c_str());
            s.bind(1, d.device_id).bind(2, d.generation_id).bind(3, d.etag).bind(4, to_string(d.status));
            s.bind(5, d.status_reason).bind(6, to_string(d.authentication));
            s.bind(7, d.primary_key).bind(8, d.secondary_key);
            s.bind(9, d.primary_thumbprint).bind(10, d.secondary_thumbprint);
            s.bind(11, std::int64_t{d.connected ? 1 : 0}).bind(12, d.connection_state_updated_time);
            s.bind(13, d.status_updated_time).bind(14, d.last_activity_time);
            check_done(s.step(), "import device");
        }
        for (const auto& p : snap.policies)
            insert_policy(p, "import policy");
        for (const auto& [key, value] : snap.settings) {
            auto s = prepare("INSERT INTO settings (key, value) VALUES (?1, ?2)");
            s.bind(1, key).bind(2, value);
            check_done(s.step(), "import setting");
        }
        for (const auto& e : snap.audit) {
            auto s = prepare("INSERT INTO audit (id, time, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)");
            s.bind(1, e.id).bind(2, e.time).bind(3, e.actor).bind(4, e.action).bind(5, e.subject).bind(6, e.detail);
            check_done(s.step(), "import audit entry");
        }
        for (const auto& c : snap.device_cas)
            check_done(insert_device_ca(c, false), "import device CA");
        tx.commit();
    }

    std::string describe() const override { return "sqlite " + file_.string(); }

private:
    void insert_policy(const access_policy& p, const char* what)
    {
        auto s = prepare("INSERT INTO policies (name, primary_key, secondary_key, permissions) VALUES (?1, ?2, ?3, ?4)");
        s.bind(1, p.name).bind(2, p.primary_key).bind(3, p.secondary_key).bind(4, std::int64_t{p.permissions});
        check_done(s.step(), what);
    }

    int insert_device_ca(const device_ca& c, bool replace)
    {
        auto s = prepare(replace ? "INSERT OR REPLACE INTO device_cas (name, pem, thumbprint, added_time) VALUES (?1, ?2, ?3, ?4)"
                                 : "INSERT INTO device_cas (name, pem, thumbprint, added_time) VALUES (?1, ?2, ?3, ?4)");
        s.bind(1, c.name).bind(2, c.pem).bind(3, c.thumbprint).bind(4, c.added_time);
        return s.step();
    }

    std::vector<device_ca> list_device_cas_locked(const char* what)
    {
        auto s = prepare("SELECT name, pem, thumbprint, added_time FROM device_cas ORDER BY name");
        std::vector<device_ca> out;
        for_each_row(s, what, [&] { out.push_back(read_device_ca(s)); });
        return out;
    }

    static device_ca read_device_ca(const statement& s) { return {s.text(0), s.text(1), s.text(2), s.text(3)}; }

    // BEGIN IMMEDIATE takes the write lock up front (waiting via busy_timeout); a deferred
    // read-then-write transaction could instead fail with SQLITE_BUSY_SNAPSHOT without waiting.
    class transaction {
    public:
        explicit transaction(sqlite_registry& r) : r_(r) { r_.exec("BEGIN IMMEDIATE", "begin transaction"); }
        ~transaction() { if (!done_) sqlite3_exec(r_.db(), "ROLLBACK", nullptr, nullptr, nullptr); }
        void commit() { r_.exec("COMMIT", "commit"); done_ = true; }

    private:
        sqlite_registry& r_;
        bool done_ = false;
    };

    void open()
    {
        create_private_dirs(file_.parent_path());
        // SQLite creates -wal and -shm with the main file's mode, so creating it 0600 first
        // covers all three without touching the process-wide umask.
        int fd = ::open(file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) throw std::runtime_error("registry " + file_.string() + ": cannot open: " + std::strerror(errno));
        ::fchmod(fd, 0600);
        ::close(fd);
        for (const char* suffix : {"-wal", "-shm"}) ::chmod((file_.string() + suffix).c_str(), 0600);

        sqlite3* raw = nullptr;
        int rc = sqlite3_open_v2(file_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 nullptr);
        db_.reset(raw); // closed even when open fails: sqlite hands back a handle for the message
        if (rc != SQLITE_OK) fail("cannot open");
        sqlite3_extended_result_codes(db(), 1);
        exec("PRAGMA busy_timeout=5000", "set busy_timeout");
        exec("PRAGMA journal_mode=WAL", "enable WAL");
        exec("PRAGMA synchronous=NORMAL", "set synchronous");
        exec("PRAGMA foreign_keys=ON", "enable foreign keys");

        transaction tx(*this);
        int version = user_version();
        if (version == 0) {
            exec(schema_sql, "create schema");
            add_default_policies();
        }
        if (version < 2)
            exec(audit_schema_sql, "create audit table");
        if (version < 3)
            exec(device_cas_schema_sql, "create device_cas table");
        if (version < schema_version) {
            exec(("PRAGMA user_version=" + std::to_string(schema_version)).c_str(), "set schema version");
        } else if (version > schema_version) {
            throw std::runtime_error("registry " + file_.string() + ": schema version " + std::to_string(version) +
                                     " is newer than this program supports (" + std::to_string(schema_version) + ")");
        }
        tx.commit();
    }

    int user_version()
    {
        auto s = prepare("PRAGMA user_version");
        if (s.step() != SQLITE_ROW) fail("read schema version");
        return static_cast<int>(s.integer(0));
    }

    void add_default_policies()
    {
        for (const auto& p : detail::default_policies())
            insert_policy(p, "create default policies");
    }

    static access_policy read_policy(const statement& s)
    {
        return {s.text(0), s.text(1), s.text(2), static_cast<unsigned>(s.integer(3))};
    }

    std::optional<device_identity> find_locked(std::string_view device_id)
    {
        auto s = prepare(find_device_sql.c_str());
        s.bind(1, device_id);
        std::optional<device_identity> out;
        for_each_row(s, "find device", [&] { out = read_device(s); });
        return out;
    }

    statement prepare(const char* sql)
    {
        statement s(db(), sql, statements_);
        if (!s.ok()) fail("prepare statement");
        return s;
    }

    void exec(const char* sql, const char* what)
    {
        if (sqlite3_exec(db(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail(what);
    }

    // Steps through every row; anything but a clean end is an error.
    template <class F> void for_each_row(statement& s, const char* what, F&& on_row)
    {
        int rc;
        while ((rc = s.step()) == SQLITE_ROW) on_row();
        check_done(rc, what);
    }

    void check_done(int rc, const char* what)
    {
        if (rc != SQLITE_DONE) fail(what);
    }

    [[noreturn]] void fail(const char* what)
    {
        std::string msg = db_ ? sqlite3_errmsg(db()) : "out of memory";
        throw std::runtime_error("registry " + file_.string() + ": " + what + ": " + msg);
    }

    sqlite3* db() const { return db_.get(); }

    struct closer {
        void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
    };
    std::filesystem::path file_;
    std::unique_ptr<sqlite3, closer> db_;
    statement_cache statements_; // after db_: finalized before the connection closes
    // One connection per object: the mutex also keeps a transaction's statements together.
    std::mutex mutex_;
};

} // namespace

std::unique_ptr<registry> open_sqlite_registry(const std::filesystem::path& file)
{
    return std::make_unique<sqlite_registry>(file);
}

} // namespace sg::relay
