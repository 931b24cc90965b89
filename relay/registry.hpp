#pragma once
// The relay's identity registry: devices and shared access policies.
// A small interface with two implementations: the embedded SQLite file (the default) and a
// shared PostgreSQL database (--registry postgresql://..., for cluster mode).
// Implementations are safe to call from several threads.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sg::relay {

enum class device_status { enabled, disabled };
enum class auth_type { sas, self_signed, certificate_authority };

std::string_view to_string(device_status s);   // "enabled" / "disabled"
std::string_view to_string(auth_type a);       // "sas" / "selfSigned" / "certificateAuthority"
std::optional<device_status> parse_device_status(std::string_view s);
std::optional<auth_type> parse_auth_type(std::string_view s);

struct device_identity {
    std::string device_id;
    std::string generation_id;            // set on create
    std::string etag;                     // changes on every update
    device_status status = device_status::enabled;
    std::string status_reason;
    auth_type authentication = auth_type::sas;
    std::string primary_key, secondary_key;               // sas: base64, 32 bytes
    std::string primary_thumbprint, secondary_thumbprint; // self_signed: SHA-256 hex, upper case
    bool connected = false;                               // connectionState
    std::string connection_state_updated_time;            // ISO 8601 UTC, e.g. 2026-11-27T07:31:05Z
    std::string status_updated_time;
    std::string last_activity_time;
};

namespace permission {
constexpr unsigned registry_read = 1, registry_write = 2, service_connect = 4, device_connect = 8;
}
std::string permissions_to_string(unsigned permissions); // e.g. "RegistryRead, ServiceConnect"

struct access_policy {
    std::string name;
    std::string primary_key, secondary_key;
    unsigned permissions = 0;
};

// One change to the registry: who made it (e.g. "admin-cli uid=1000"), what and to whom.
// Never holds key material.
struct audit_entry {
    std::int64_t id = 0;  // set by the registry, increasing
    std::string time;     // set by the registry, ISO 8601 UTC
    std::string actor, action, subject, detail;
};

// A CA certificate an operator uploaded (`certificate add`): devices registered with
// certificateAuthority authentication present a certificate that chains to one of them. The
// registry stores it as given; x509_auth.hpp checks it first (name rules, PEM, CA:TRUE).
struct device_ca {
    std::string name;       // [A-Za-z0-9._-]{1,64}
    std::string pem;        // one or more PEM certificates, every one a CA
    std::string thumbprint; // SHA-256 of the first certificate's DER encoding, upper-case hex
    std::string added_time; // ISO 8601 UTC; set by the registry when empty
};

enum class registry_result { ok, not_found, already_exists, etag_mismatch };

// The registry's database cannot be reached (PostgreSQL down or restarting): callers answer
// 503002 and try again later; the backend reconnects by itself. The message names the database
// (never its password).
class registry_unavailable : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Everything a registry holds, as stored (ids, etags, generation ids, keys, times): what
// `migrate` copies from one backend to another.
struct registry_snapshot {
    std::vector<device_identity> devices;
    std::vector<access_policy> policies;
    std::vector<std::pair<std::string, std::string>> settings;
    std::vector<audit_entry> audit;
    std::vector<device_ca> device_cas;
};

class registry {
public:
    virtual ~registry() = default;

    virtual std::optional<device_identity> find_device(std::string_view device_id) = 0;
    virtual std::vector<device_identity> list_devices() = 0;
    // Fills generation_id, etag, times and, for sas devices with empty keys, fresh keys.
    virtual registry_result create_device(device_identity& device) = 0;
    // if_match empty or "*" updates unconditionally; otherwise it must equal the stored etag.
    // Writes status, status_reason, authentication, keys and thumbprints; bumps etag.
    virtual registry_result update_device(device_identity& device, std::string_view if_match) = 0;
    virtual registry_result delete_device(std::string_view device_id, std::string_view if_match) = 0;

    // Connection state, written by the relay as control connections come and go.
    virtual void set_connection_state(std::string_view device_id, bool connected) = 0;
    virtual void mark_all_disconnected() = 0;

    virtual std::optional<access_policy> find_policy(std::string_view name) = 0;
    virtual std::vector<access_policy> list_policies() = 0;

    // Small key/value settings (hub name, last listen address, ...).
    virtual std::optional<std::string> get_setting(std::string_view key) = 0;
    virtual void set_setting(std::string_view key, std::string_view value) = 0;

    // The audit trail: admin commands append to it; the relay logs what others appended.
    virtual void append_audit(const audit_entry& entry) = 0;
    virtual std::vector<audit_entry> audit_after(std::int64_t id, std::size_t max_entries) = 0;
    virtual std::int64_t last_audit_id() = 0;

    // Device CAs (table device_cas), ordered by name. add: already_exists when the name is taken,
    // unless `replace` (then the stored CA is replaced, with a new added_time).
    virtual registry_result add_device_ca(device_ca& ca, bool replace) = 0;
    virtual std::optional<device_ca> find_device_ca(std::string_view name) = 0;
    virtual std::vector<device_ca> list_device_cas() = 0;
    virtual registry_result delete_device_ca(std::string_view name) = 0;

    // Changes whenever another process (or another registry object) commits a change to devices,
    // policies, settings, device CAs or the audit trail, so the relay notices admin commands run beside it.
    // SQLite: PRAGMA data_version. PostgreSQL: notifications on channel streamgate_registry.
    // Never throws: a backend that lost its database bumps it once it is back.
    virtual std::uint64_t external_change_counter() = 0;

    virtual registry_snapshot export_all() = 0;
    // Replaces devices, policies, settings, device CAs and the audit trail with `s` in one transaction,
    // keeping every stored value (the audit ids too).
    virtual void import_all(const registry_snapshot& s) = 0;

    // "sqlite /path/registry.db" or "postgresql://user@host:port/db": for logs and errors, never
    // holding a password.
    virtual std::string describe() const = 0;
};

// Opens (creating on first use, with WAL, 0600) <file>. A new database gets the five default
// shared access policies with fresh keys: iothubowner (all four permissions), service
// (ServiceConnect), device (DeviceConnect), registryRead (RegistryRead), registryReadWrite
// (RegistryRead|RegistryWrite). Throws std::runtime_error with a clear message on failure.
std::unique_ptr<registry> open_sqlite_registry(const std::filesystem::path& file);

// postgresql://user:password@host:port/database[?param=value...] (also postgres://), as libpq
// reads it. Creates or migrates the schema (version table schema_version) under an advisory lock,
// with the same default policies as SQLite on a new database. Throws registry_unavailable when
// the server cannot be reached, std::runtime_error for other failures.
std::unique_ptr<registry> open_postgres_registry(const std::string& url);
bool is_postgres_url(std::string_view url);
// The URL without its password (user info and password= parameter): safe to log.
std::string redact_database_url(std::string_view url);

// ISO 8601 UTC to the second, e.g. 2026-11-27T07:31:05Z (the registry's time format).
std::string utc_iso8601(std::chrono::system_clock::time_point t);
std::string utc_now_iso8601();

} // namespace sg::relay
