// The shared registry: a PostgreSQL database that several relays and their admin commands use at
// once. Same tables and semantics as the SQLite registry; writes that need a read first lock the
// row (SELECT ... FOR UPDATE) so etag checks hold across processes. Triggers notify channel
// streamgate_registry on every change to credentials, policies, settings, device CAs or the audit
// trail; a second connection LISTENs, which is how external_change_counter() sees other
// processes' writes.
#include "relay/registry.hpp"
#include "relay/pg_connection.hpp"
#include "relay/registry_util.hpp"

#include <chrono>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace sg::relay {

namespace {

// Migrations, applied in order inside one transaction under an advisory lock; schema_version
// holds the last one applied. Version 1 is SQLite's version 2 (devices, policies, settings,
// audit) plus the notification triggers; version 2 adds cluster mode's tables; version 3 the
// device CAs (SQLite's version 3), notifying like devices do.
constexpr const char* migrations[] = {
    R"sql(
CREATE TABLE devices (
    device_id text PRIMARY KEY, generation_id text NOT NULL, etag text NOT NULL,
    status text NOT NULL, status_reason text NOT NULL, auth_type text NOT NULL,
    primary_key text NOT NULL, secondary_key text NOT NULL,
    primary_thumbprint text NOT NULL, secondary_thumbprint text NOT NULL,
    connected boolean NOT NULL, connection_state_updated_time text NOT NULL,
    status_updated_time text NOT NULL, last_activity_time text NOT NULL
);
CREATE TABLE policies (
    name text PRIMARY KEY, primary_key text NOT NULL, secondary_key text NOT NULL, permissions integer NOT NULL
);
CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE audit (
    id bigserial PRIMARY KEY, time text NOT NULL, actor text NOT NULL,
    action text NOT NULL, subject text NOT NULL, detail text NOT NULL
);
CREATE FUNCTION streamgate_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('streamgate_registry', TG_TABLE_NAME);
    RETURN NULL;
END $$;
-- Connection-state writes (connected, *_time) are not changes anyone must react to.
CREATE TRIGGER devices_changed AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF
    etag, status, auth_type, primary_key, secondary_key, primary_thumbprint, secondary_thumbprint
    ON devices FOR EACH STATEMENT EXECUTE FUNCTION streamgate_notify();
CREATE TRIGGER policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON policies
    FOR EACH STATEMENT EXECUTE FUNCTION streamgate_notify();
CREATE TRIGGER settings_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON settings
    FOR EACH STATEMENT EXECUTE FUNCTION streamgate_notify();
CREATE TRIGGER audit_appended AFTER INSERT ON audit FOR EACH STATEMENT EXECUTE FUNCTION streamgate_notify();
)sql",
    // Version 2, cluster mode (relay/cluster_store.cpp): node leases, presence, the nodes' shared
    // secret. Leases and presence are UNLOGGED: after a database crash they are empty, which is
    // right (every node re-registers and re-claims its devices within a heartbeat). Lease times
    // are the database's clock, so nodes' clocks need not agree.
    R"sql(
CREATE UNLOGGED TABLE cluster_nodes (
    node_id text PRIMARY KEY, epoch text NOT NULL, public_url text NOT NULL,
    cluster_address text NOT NULL, certificate_sha256 text NOT NULL,
    started timestamptz NOT NULL, lease_until timestamptz NOT NULL
);
CREATE SEQUENCE presence_claims;
CREATE UNLOGGED TABLE presence (
    device_id text PRIMARY KEY, node_id text NOT NULL, epoch text NOT NULL,
    claim bigint NOT NULL, since timestamptz NOT NULL
);
CREATE INDEX presence_by_node ON presence (node_id, epoch);
CREATE TABLE cluster_secret (id integer PRIMARY KEY CHECK (id = 1), secret text NOT NULL);
)sql",
    R"sql(
CREATE TABLE device_cas (
    name text PRIMARY KEY, pem text NOT NULL, thumbprint text NOT NULL, added_time text NOT NULL
);
CREATE TRIGGER device_cas_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_cas
    FOR EACH STATEMENT EXECUTE FUNCTION streamgate_notify();
)sql",
};
constexpr int schema_version = static_cast<int>(std::size(migrations));
constexpr const char* migration_lock = "SELECT pg_advisory_xact_lock(7420155329)"; // any constant, same everywhere

constexpr const char* device_columns =
    "device_id, generation_id, etag, status, status_reason, auth_type, primary_key, secondary_key, "
    "primary_thumbprint, secondary_thumbprint, connected, connection_state_updated_time, "
    "status_updated_time, last_activity_time";
constexpr const char* insert_device_sql =
    "INSERT INTO devices (device_id, generation_id, etag, status, status_reason, auth_type, primary_key, "
    "secondary_key, primary_thumbprint, secondary_thumbprint, connected, connection_state_updated_time, "
    "status_updated_time, last_activity_time) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (device_id) DO NOTHING";
constexpr const char* insert_device_ca_sql =
    "INSERT INTO device_cas (name, pem, thumbprint, added_time) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING";
constexpr const char* replace_device_ca_sql =
    "INSERT INTO device_cas (name, pem, thumbprint, added_time) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE "
    "SET pem = excluded.pem, thumbprint = excluded.thumbprint, added_time = excluded.added_time";
constexpr const char* select_device_cas_sql = "SELECT name, pem, thumbprint, added_time FROM device_cas";
constexpr const char* insert_policy_sql =
    "INSERT INTO policies (name, primary_key, secondary_key, permissions) VALUES ($1, $2, $3, $4)";

std::vector<std::string> device_params(const device_identity& d)
{
    return {d.device_id, d.generation_id, d.etag, std::string(to_string(d.status)), d.status_reason,
            std::string(to_string(d.authentication)), d.primary_key, d.secondary_key, d.primary_thumbprint,
            d.secondary_thumbprint, d.connected ? "true" : "false", d.connection_state_updated_time,
            d.status_updated_time, d.last_activity_time};
}

device_identity read_device(const pg::result& r, int row)
{
    device_identity d;
    d.device_id = r.text(row, 0), d.generation_id = r.text(row, 1), d.etag = r.text(row, 2);
    d.status = parse_device_status(r.text(row, 3)).value_or(device_status::disabled);
    d.status_reason = r.text(row, 4);
    d.authentication = parse_auth_type(r.text(row, 5)).value_or(auth_type::sas);
    d.primary_key = r.text(row, 6), d.secondary_key = r.text(row, 7);
    d.primary_thumbprint = r.text(row, 8), d.secondary_thumbprint = r.text(row, 9);
    d.connected = r.boolean(row, 10);
    d.connection_state_updated_time = r.text(row, 11), d.status_updated_time = r.text(row, 12);
    d.last_activity_time = r.text(row, 13);
    return d;
}

access_policy read_policy(const pg::result& r, int row)
{
    return {r.text(row, 0), r.text(row, 1), r.text(row, 2), static_cast<unsigned>(r.integer(row, 3))};
}

std::vector<std::string> policy_params(const access_policy& p)
{
    return {p.name, p.primary_key, p.secondary_key, std::to_string(p.permissions)};
}

std::vector<device_ca> read_device_cas(const pg::result& r)
{
    std::vector<device_ca> out;
    for (int i = 0; i < r.rows(); ++i)
        out.push_back({r.text(i, 0), r.text(i, 1), r.text(i, 2), r.text(i, 3)});
    return out;
}

class transaction {
public:
    explicit transaction(pg::connection& c) : c_(c) { c_.exec("BEGIN", "begin transaction"); }
    ~transaction()
    {
        if (done_)
            return;
        try {
            c_.exec("ROLLBACK", "roll back");
        } catch (const std::exception&) {
            // The connection is gone, and the transaction with it.
        }
    }
    void commit()
    {
        c_.exec("COMMIT", "commit");
        done_ = true;
    }

private:
    pg::connection& c_;
    bool done_ = false;
};

class postgres_registry final : public registry {
public:
    explicit postgres_registry(const std::string& url) : url_(url), db_(url) { migrate(); }

    std::optional<device_identity> find_device(std::string_view device_id) override
    {
        std::lock_guard lock(mutex_);
        return find_locked(device_id, "");
    }

    std::vector<device_identity> list_devices() override
    {
        std::lock_guard lock(mutex_);
        auto r = read(("SELECT " + std::string(device_columns) + " FROM devices ORDER BY device_id").c_str(), {},
                      "list devices");
        std::vector<device_identity> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back(read_device(r, i));
        return out;
    }

    registry_result create_device(device_identity& device) override
    {
        std::lock_guard lock(mutex_);
        device_identity d = device;
        detail::prepare_new_device(d);
        if (db_.exec(insert_device_sql, device_params(d), "create device").affected() == 0)
            return registry_result::already_exists;
        device = std::move(d);
        return registry_result::ok;
    }

    registry_result update_device(device_identity& device, std::string_view if_match) override
    {
        std::lock_guard lock(mutex_);
        transaction tx(db_);
        auto stored = find_locked(device.device_id, " FOR UPDATE");
        if (!stored)
            return registry_result::not_found;
        if (!detail::etag_matches(if_match, stored->etag))
            return registry_result::etag_mismatch;
        device_identity d = device;
        detail::prepare_update(d, *stored);
        db_.exec("UPDATE devices SET etag = $2, status = $3, status_reason = $4, auth_type = $5, primary_key = $6, "
                 "secondary_key = $7, primary_thumbprint = $8, secondary_thumbprint = $9, status_updated_time = $10 "
                 "WHERE device_id = $1",
                 {d.device_id, d.etag, std::string(to_string(d.status)), d.status_reason,
                  std::string(to_string(d.authentication)), d.primary_key, d.secondary_key, d.primary_thumbprint,
                  d.secondary_thumbprint, d.status_updated_time},
                 "update device");
        tx.commit();
        device = std::move(d);
        return registry_result::ok;
    }

    registry_result delete_device(std::string_view device_id, std::string_view if_match) override
    {
        std::lock_guard lock(mutex_);
        transaction tx(db_);
        auto stored = find_locked(device_id, " FOR UPDATE");
        if (!stored)
            return registry_result::not_found;
        if (!detail::etag_matches(if_match, stored->etag))
            return registry_result::etag_mismatch;
        db_.exec("DELETE FROM devices WHERE device_id = $1", {std::string(device_id)}, "delete device");
        tx.commit();
        return registry_result::ok;
    }

    void set_connection_state(std::string_view device_id, bool connected) override
    {
        std::lock_guard lock(mutex_);
        db_.exec("UPDATE devices SET connected = $2, connection_state_updated_time = $3, last_activity_time = $3 "
                 "WHERE device_id = $1",
                 {std::string(device_id), connected ? "true" : "false", utc_now_iso8601()}, "set connection state");
    }

    void mark_all_disconnected() override
    {
        std::lock_guard lock(mutex_);
        db_.exec("UPDATE devices SET connected = false, connection_state_updated_time = $1 WHERE connected",
                 {utc_now_iso8601()}, "mark devices disconnected");
    }

    std::optional<access_policy> find_policy(std::string_view name) override
    {
        std::lock_guard lock(mutex_);
        auto r = read("SELECT name, primary_key, secondary_key, permissions FROM policies WHERE name = $1",
                      {std::string(name)}, "find policy");
        if (r.rows() == 0)
            return std::nullopt;
        return read_policy(r, 0);
    }

    std::vector<access_policy> list_policies() override
    {
        std::lock_guard lock(mutex_);
        auto r = read("SELECT name, primary_key, secondary_key, permissions FROM policies ORDER BY name", {},
                      "list policies");
        std::vector<access_policy> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back(read_policy(r, i));
        return out;
    }

    std::optional<std::string> get_setting(std::string_view key) override
    {
        std::lock_guard lock(mutex_);
        auto r = read("SELECT value FROM settings WHERE key = $1", {std::string(key)}, "read setting");
        if (r.rows() == 0)
            return std::nullopt;
        return r.text(0, 0);
    }

    void set_setting(std::string_view key, std::string_view value) override
    {
        std::lock_guard lock(mutex_);
        // Writing the value a setting already has is no change (and notifies nobody).
        db_.exec("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = "
                 "excluded.value WHERE settings.value IS DISTINCT FROM excluded.value",
                 {std::string(key), std::string(value)}, "write setting");
    }

    void append_audit(const audit_entry& e) override
    {
        std::lock_guard lock(mutex_);
        db_.exec("INSERT INTO audit (time, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
                 {utc_now_iso8601(), e.actor, e.action, e.subject, e.detail}, "append audit entry");
    }

    std::vector<audit_entry> audit_after(std::int64_t id, std::size_t max_entries) override
    {
        std::lock_guard lock(mutex_);
        auto r = read("SELECT id, time, actor, action, subject, detail FROM audit WHERE id > $1 ORDER BY id LIMIT $2",
                      {std::to_string(id), std::to_string(max_entries)}, "read audit");
        return read_audit(r);
    }

    std::int64_t last_audit_id() override
    {
        std::lock_guard lock(mutex_);
        return read("SELECT COALESCE(MAX(id), 0) FROM audit", {}, "read audit").integer(0, 0);
    }

    registry_result add_device_ca(device_ca& ca, bool replace) override
    {
        std::lock_guard lock(mutex_);
        device_ca c = ca;
        if (c.added_time.empty())
            c.added_time = utc_now_iso8601();
        auto r = db_.exec(replace ? replace_device_ca_sql : insert_device_ca_sql,
                          {c.name, c.pem, c.thumbprint, c.added_time}, "add device CA");
        if (r.affected() == 0)
            return registry_result::already_exists;
        ca = std::move(c);
        return registry_result::ok;
    }

    std::optional<device_ca> find_device_ca(std::string_view name) override
    {
        std::lock_guard lock(mutex_);
        auto found = read_device_cas(read((std::string(select_device_cas_sql) + " WHERE name = $1").c_str(),
                                          {std::string(name)}, "find device CA"));
        if (found.empty())
            return std::nullopt;
        return std::move(found.front());
    }

    std::vector<device_ca> list_device_cas() override
    {
        std::lock_guard lock(mutex_);
        return read_device_cas(
            read((std::string(select_device_cas_sql) + " ORDER BY name").c_str(), {}, "list device CAs"));
    }

    registry_result delete_device_ca(std::string_view name) override
    {
        std::lock_guard lock(mutex_);
        auto r = db_.exec("DELETE FROM device_cas WHERE name = $1", {std::string(name)}, "delete device CA");
        return r.affected() > 0 ? registry_result::ok : registry_result::not_found;
    }

    std::uint64_t external_change_counter() override
    {
        std::lock_guard lock(listen_mutex_);
        std::vector<int> senders;
        if (listening_ && listener_->poll_notifications(senders)) {
            for (int pid : senders)
                if (pid != db_.backend_pid())
                    ++changes_;
            return changes_;
        }
        // Not listening yet (the first call: admin commands never listen), or the connection was
        // lost: notifications sent meanwhile are gone, so once it listens, count one change and let
        // the caller re-check everything. At most one attempt a second while the server is away.
        listening_ = false;
        auto now = std::chrono::steady_clock::now();
        if (now - last_listen_attempt_ < std::chrono::seconds(1))
            return changes_;
        last_listen_attempt_ = now;
        try {
            if (!listener_)
                listener_ = std::make_unique<pg::connection>(url_);
            listener_->ensure_open();
            listener_->exec("LISTEN streamgate_registry", "listen for changes");
            listening_ = true;
            ++changes_;
        } catch (const std::exception&) {
            // Still away: a later call tries again.
        }
        return changes_;
    }

    registry_snapshot export_all() override
    {
        std::lock_guard lock(mutex_);
        transaction tx(db_);
        db_.exec("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY", "start snapshot");
        registry_snapshot out;
        auto d = db_.exec(("SELECT " + std::string(device_columns) + " FROM devices ORDER BY device_id").c_str(),
                          "export devices");
        for (int i = 0; i < d.rows(); ++i)
            out.devices.push_back(read_device(d, i));
        auto p = db_.exec("SELECT name, primary_key, secondary_key, permissions FROM policies ORDER BY name",
                          "export policies");
        for (int i = 0; i < p.rows(); ++i)
            out.policies.push_back(read_policy(p, i));
        auto s = db_.exec("SELECT key, value FROM settings ORDER BY key", "export settings");
        for (int i = 0; i < s.rows(); ++i)
            out.settings.emplace_back(s.text(i, 0), s.text(i, 1));
        out.audit = read_audit(
            db_.exec("SELECT id, time, actor, action, subject, detail FROM audit ORDER BY id", "export audit"));
        out.device_cas = read_device_cas(
            db_.exec((std::string(select_device_cas_sql) + " ORDER BY name").c_str(), "export device CAs"));
        tx.commit();
        return out;
    }

    void import_all(const registry_snapshot& snap) override
    {
        std::lock_guard lock(mutex_);
        transaction tx(db_);
        db_.exec("DELETE FROM devices", "clear devices");
        db_.exec("DELETE FROM policies", "clear policies");
        db_.exec("DELETE FROM settings", "clear settings");
        db_.exec("DELETE FROM audit", "clear audit");
        db_.exec("DELETE FROM device_cas", "clear device CAs");
        for (const auto& d : snap.devices)
            db_.exec(insert_device_sql, device_params(d), "import device");
        for (const auto& p : snap.policies)
            db_.exec(insert_policy_sql, policy_params(p), "import policy");
        for (const auto& [key, value] : snap.settings)
            db_.exec("INSERT INTO settings (key, value) VALUES ($1, $2)", {key, value}, "import setting");
        for (const auto& e : snap.audit)
            db_.exec("INSERT INTO audit (id, time, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                     {std::to_string(e.id), e.time, e.actor, e.action, e.subject, e.detail}, "import audit entry");
        for (const auto& c : snap.device_cas)
            db_.exec(insert_device_ca_sql, {c.name, c.pem, c.thumbprint, c.added_time}, "import device CA");
        // New entries continue after the imported ids.
        db_.exec("SELECT setval(pg_get_serial_sequence('audit', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM audit",
                 "continue audit ids");
        tx.commit();
    }

    std::string describe() const override { return db_.redacted_url(); }

private:
    // A read is safe to repeat: when the connection was lost under it, reconnect and try once more.
    pg::result read(const char* sql, const std::vector<std::string>& params, const char* what)
    {
        try {
            return db_.exec(sql, params, what);
        } catch (const registry_unavailable&) {
            if (db_.in_transaction())
                throw;
            return db_.exec(sql, params, what);
        }
    }

    std::optional<device_identity> find_locked(std::string_view device_id, const char* suffix)
    {
        auto sql = "SELECT " + std::string(device_columns) + " FROM devices WHERE device_id = $1" + suffix;
        auto r = read(sql.c_str(), {std::string(device_id)}, "find device");
        if (r.rows() == 0)
            return std::nullopt;
        return read_device(r, 0);
    }

    static std::vector<audit_entry> read_audit(const pg::result& r)
    {
        std::vector<audit_entry> out;
        for (int i = 0; i < r.rows(); ++i)
            out.push_back({r.integer(i, 0), r.text(i, 1), r.text(i, 2), r.text(i, 3), r.text(i, 4), r.text(i, 5)});
        return out;
    }

    void migrate()
    {
        transaction tx(db_);
        db_.exec(migration_lock, "lock schema");
        db_.exec("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)", "create schema_version");
        auto r = db_.exec("SELECT COALESCE(MAX(version), 0) FROM schema_version", "read schema version");
        int version = static_cast<int>(r.integer(0, 0));
        if (version > schema_version)
            throw std::runtime_error("registry " + db_.redacted_url() + ": schema version " + std::to_string(version) +
                                     " is newer than this program supports (" + std::to_string(schema_version) + ")");
        for (int v = version; v < schema_version; ++v)
            db_.script(migrations[v], ("migrate schema to version " + std::to_string(v + 1)).c_str());
        if (version == 0)
            for (const auto& p : detail::default_policies())
                db_.exec(insert_policy_sql, policy_params(p), "create default policies");
        if (version < schema_version) {
            db_.exec("DELETE FROM schema_version", "set schema version");
            db_.exec("INSERT INTO schema_version (version) VALUES ($1)", {std::to_string(schema_version)},
                     "set schema version");
        }
        tx.commit();
    }

    // One connection behind one mutex, as the SQLite backend: look-ups are short loopback or LAN
    // round trips, and the mutex also keeps a transaction's statements on one connection.
    const std::string url_;
    pg::connection db_;
    std::mutex mutex_; // notifications sent by db_'s backend are our own, not external

    std::unique_ptr<pg::connection> listener_; // LISTENs only; opened by the first external_change_counter()
    std::mutex listen_mutex_;
    bool listening_ = false;
    std::uint64_t changes_ = 0;
    std::chrono::steady_clock::time_point last_listen_attempt_{};
};

} // namespace

std::unique_ptr<registry> open_postgres_registry(const std::string& url)
{
    if (!is_postgres_url(url))
        throw std::runtime_error("registry " + redact_database_url(url) +
                                 ": expected postgresql://user:password@host:port/database");
    return std::make_unique<postgres_registry>(url);
}

} // namespace sg::relay
