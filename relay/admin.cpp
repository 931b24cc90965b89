#include "relay/admin.hpp"

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <iostream>
#include <pwd.h>
#include <unistd.h>
#include "common/connection_string.hpp"
#include "common/crypto.hpp"
#include "common/device_id.hpp"
#include "common/error.hpp"
#include "relay/data_dir.hpp"
#include "relay/device_json.hpp"
#include "relay/x509_auth.hpp"

namespace sg::relay {
namespace json = boost::json;

namespace {

int fail(int code, const std::string& message)
{
    std::cerr << "error: " << failure{code, message}.describe() << "\n";
    return 1;
}

struct opened {
    std::unique_ptr<registry> reg;
    std::string host_name;
};

opened open(const admin_options& o)
{
    opened out;
    out.reg = open_registry(o.data_dir, o.registry);
    out.host_name = recorded_host_name(*out.reg, o.host_name);
    // The CA exists from the first command on, so clients can be given ca.pem right away.
    // A relay that already made its certificates is left alone (it may be running).
    if (!std::filesystem::exists(o.data_dir / "server.pem"))
        ensure_certificates(o.data_dir, certificate_names(out.host_name));
    return out;
}

// Admin commands write to the registry behind the relay's back: the audit trail tells the relay
// (which logs it) and later readers who changed what.
void audit(registry& reg, std::string action, std::string subject, std::string detail)
{
    auto uid = ::getuid();
    std::string actor = "admin-cli uid=" + std::to_string(uid);
    if (const passwd* pw = ::getpwuid(uid))
        actor += " user=" + std::string(pw->pw_name);
    reg.append_audit({0, {}, std::move(actor), std::move(action), std::move(subject), std::move(detail)});
}

// The Azure IoT SDKs' clients take HostName as a bare host and always dial 443: a HostName with
// another port makes them fail (getaddrinfo ENOTFOUND). Said once, on stderr, so stdout stays the
// connection string alone.
void hint_if_not_443(const std::string& host)
{
    if (!names_port(host))
        return;
    std::cerr << "hint: HostName " << host << " names port " << host.substr(host.rfind(':') + 1)
              << "; Azure IoT SDK clients always connect to 443 and fail on a HostName with a port. For them, run "
                 "the relay with --listen 0.0.0.0:443, or behind a port-443 forwarder with --host-name NAME:443 "
                 "(see README, \"Azure IoT SDK clients\")\n";
}

std::string device_connection_string(const std::string& host, const device_identity& d, const std::string& key_type)
{
    connection_string cs;
    cs.host_name = host;
    cs.device_id = d.device_id;
    if (d.authentication == auth_type::sas)
        cs.shared_access_key = key_type == "secondary" ? d.secondary_key : d.primary_key;
    else
        cs.x509 = true;
    return cs.to_string();
}

int create_device(const admin_options& o)
{
    if (!is_valid_device_id(o.device_id))
        return fail(codes::invalid_device_id, "invalid device id: use 1-128 letters, digits and - . + % _ # * ? ! ( ) , : = @ $");
    auto [reg, host] = open(o);
    device_identity d;
    d.device_id = o.device_id;
    if (o.auth_method == "x509_thumbprint") {
        d.authentication = auth_type::self_signed;
        d.primary_thumbprint = o.primary_thumbprint;
        d.secondary_thumbprint = o.secondary_thumbprint;
        if (d.primary_thumbprint.empty())
            return fail(codes::bad_request, "--auth-method x509_thumbprint needs --primary-thumbprint");
    } else if (o.auth_method == "x509_ca") {
        d.authentication = auth_type::certificate_authority;
    } else if (o.auth_method != "shared_private_key") {
        return fail(codes::bad_request, "--auth-method must be shared_private_key, x509_thumbprint or x509_ca");
    }
    if (!o.status.empty()) {
        auto s = parse_device_status(o.status);
        if (!s)
            return fail(codes::bad_request, "--status must be enabled or disabled");
        d.status = *s;
    }
    if (reg->create_device(d) == registry_result::already_exists)
        return fail(codes::already_exists, "device " + o.device_id + " already exists");
    audit(*reg, "device-create", d.device_id,
          "auth=" + std::string(to_string(d.authentication)) + " status=" + std::string(to_string(d.status)));
    std::cout << device_connection_string(host, d, "primary") << "\n";
    return 0;
}

int with_device(const admin_options& o, const std::function<int(opened&, device_identity&)>& action)
{
    if (!is_valid_device_id(o.device_id))
        return fail(codes::invalid_device_id, "invalid device id");
    auto db = open(o);
    auto d = db.reg->find_device(o.device_id);
    if (!d)
        return fail(codes::device_not_found, "device " + o.device_id + " not found");
    return action(db, *d);
}

int update_device(const admin_options& o)
{
    return with_device(o, [&](opened& db, device_identity& d) {
        if (!o.status.empty()) {
            auto s = parse_device_status(o.status);
            if (!s)
                return fail(codes::bad_request, "--status must be enabled or disabled");
            d.status = *s;
        }
        if (!o.status_reason.empty())
            d.status_reason = o.status_reason;
        if (!o.renew_key.empty()) {
            if (o.renew_key != "primary" && o.renew_key != "secondary" && o.renew_key != "both")
                return fail(codes::bad_request, "--renew-key must be primary, secondary or both");
            if (o.renew_key != "secondary")
                d.primary_key = random_key_base64();
            if (o.renew_key != "primary")
                d.secondary_key = random_key_base64();
        }
        auto result = db.reg->update_device(d, o.etag);
        if (result == registry_result::etag_mismatch)
            return fail(codes::precondition_failed, "--etag does not match the device's etag");
        std::string detail = "status=" + std::string(to_string(d.status));
        if (!o.renew_key.empty())
            detail += " renew-key=" + o.renew_key;
        audit(*db.reg, "device-update", d.device_id, detail);
        std::cout << json::serialize(to_json(d)) << "\n";
        return 0;
    });
}

// Copies the registry --registry names (default: the data directory's SQLite file) into an empty
// PostgreSQL registry, keeping ids, etags, keys, device CAs and the audit trail.
int migrate(const admin_options& o)
{
    if (!is_postgres_url(o.migrate_to))
        return fail(codes::bad_request, "--to must be postgresql://user:password@host:port/database");
    if (o.registry.empty() && !std::filesystem::exists(o.data_dir / "registry.db"))
        return fail(codes::bad_request, "no registry to migrate: " + (o.data_dir / "registry.db").string() +
                                            " does not exist (check --data-dir)");
    auto source = open_registry(o.data_dir, o.registry);
    auto target = open_postgres_registry(o.migrate_to);
    if (source->describe() == target->describe())
        return fail(codes::bad_request, "--to names the registry being migrated");
    auto existing = target->export_all();
    if ((!existing.devices.empty() || !existing.audit.empty() || !existing.device_cas.empty()) && !o.force)
        return fail(codes::bad_request, "target registry " + target->describe() + " is not empty (" +
                                            std::to_string(existing.devices.size()) + " devices, " +
                                            std::to_string(existing.device_cas.size()) + " device CAs, " +
                                            std::to_string(existing.audit.size()) +
                                            " audit entries): use --force to replace its contents");
    auto snap = source->export_all();
    target->import_all(snap);
    auto copied = target->export_all();
    if (copied.devices.size() != snap.devices.size() || copied.policies.size() != snap.policies.size() ||
        copied.audit.size() != snap.audit.size() || copied.device_cas.size() != snap.device_cas.size())
        return fail(codes::internal, "the target registry does not hold what was copied; run again with --force");
    audit(*target, "registry-migrate", "", "from=\"" + source->describe() + "\" devices=" +
                                              std::to_string(snap.devices.size()));
    std::cout << "migrated " << source->describe() << " -> " << target->describe() << "\n"
              << "devices: " << snap.devices.size() << "\n"
              << "policies: " << snap.policies.size() << "\n"
              << "settings: " << snap.settings.size() << "\n"
              << "audit entries: " << snap.audit.size() << "\n"
              << "device CAs: " << snap.device_cas.size() << "\n";
    return 0;
}

} // namespace

void add_admin_commands(CLI::App& app, admin_options& o, int* result, bool* ran)
{
    auto run = [result, ran](std::function<int()> f) {
        return [result, ran, f] {
            *ran = true;
            try {
                *result = f();
            } catch (const registry_unavailable& e) {
                *result = fail(codes::registry_unavailable, e.what());
            } catch (const std::exception& e) {
                *result = fail(codes::internal, e.what());
            }
        };
    };

    auto* identity = app.add_subcommand("device-identity", "Manage device identities in the registry");
    identity->require_subcommand(1);

    auto* create = identity->add_subcommand("create", "Create a device; prints its connection string");
    create->add_option("-d,--device-id", o.device_id, "Device id (case-sensitive)")->required();
    create->add_option("--auth-method,--am", o.auth_method, "shared_private_key | x509_thumbprint | x509_ca");
    create->add_option("--primary-thumbprint,--ptp", o.primary_thumbprint, "SHA-256 thumbprint (x509_thumbprint)");
    create->add_option("--secondary-thumbprint,--stp", o.secondary_thumbprint, "SHA-256 thumbprint (x509_thumbprint)");
    create->add_option("--status", o.status, "enabled | disabled");
    create->callback(run([&o] { return create_device(o); }));

    auto* show = identity->add_subcommand("show", "Print a device as JSON, with its connectionState");
    show->add_option("-d,--device-id", o.device_id, "Device id")->required();
    show->callback(run([&o] {
        return with_device(o, [](opened&, device_identity& d) {
            std::cout << json::serialize(to_json(d)) << "\n";
            return 0;
        });
    }));

    auto* list = identity->add_subcommand("list", "Print every device as a JSON array");
    list->callback(run([&o] {
        auto db = open(o);
        json::array all;
        for (auto& d : db.reg->list_devices())
            all.push_back(to_json(d));
        std::cout << json::serialize(all) << "\n";
        return 0;
    }));

    auto* update = identity->add_subcommand("update", "Change a device's status or renew its keys");
    update->add_option("-d,--device-id", o.device_id, "Device id")->required();
    update->add_option("--status", o.status, "enabled | disabled");
    update->add_option("--status-reason", o.status_reason, "Why the status changed");
    update->add_option("--renew-key", o.renew_key, "primary | secondary | both: replace the key, invalidating the old one");
    update->add_option("--etag", o.etag, "Only update if the device still has this etag");
    update->callback(run([&o] { return update_device(o); }));

    auto* remove = identity->add_subcommand("delete", "Delete a device");
    remove->add_option("-d,--device-id", o.device_id, "Device id")->required();
    remove->add_option("--etag", o.etag, "Only delete if the device still has this etag");
    remove->callback(run([&o] {
        return with_device(o, [&o](opened& db, device_identity&) {
            if (db.reg->delete_device(o.device_id, o.etag) == registry_result::etag_mismatch)
                return fail(codes::precondition_failed, "--etag does not match the device's etag");
            audit(*db.reg, "device-delete", o.device_id, "");
            return 0;
        });
    }));

    auto* device_cs = identity->add_subcommand("show-connection-string", "Print a device's connection string");
    device_cs->add_option("-d,--device-id", o.device_id, "Device id")->required();
    device_cs->add_option("--key-type,--kt", o.key_type, "primary | secondary");
    device_cs->callback(run([&o] {
        return with_device(o, [&o](opened& db, device_identity& d) {
            std::cout << device_connection_string(db.host_name, d, o.key_type) << "\n";
            hint_if_not_443(db.host_name);
            return 0;
        });
    }));

    auto* policy_cs = app.add_subcommand("show-connection-string", "Print a shared access policy's connection string");
    policy_cs->add_option("--policy-name,--pn", o.policy_name,
                          "iothubowner | service | device | registryRead | registryReadWrite")
        ->default_val("iothubowner");
    policy_cs->add_option("--key-type,--kt", o.key_type, "primary | secondary");
    policy_cs->callback(run([&o] {
        auto db = open(o);
        auto policy = db.reg->find_policy(o.policy_name);
        if (!policy)
            return fail(codes::bad_request, "no shared access policy named " + o.policy_name);
        connection_string cs;
        cs.host_name = db.host_name;
        cs.shared_access_key_name = policy->name;
        cs.shared_access_key = o.key_type == "secondary" ? policy->secondary_key : policy->primary_key;
        std::cout << cs.to_string() << "\n";
        hint_if_not_443(db.host_name);
        return 0;
    }));

    auto* certs = app.add_subcommand("certificate", "Device CAs, kept in the registry: devices registered with "
                                                    "--auth-method x509_ca must present a certificate that chains to "
                                                    "one of them");
    certs->require_subcommand(1);
    auto* cert_add = certs->add_subcommand("add", "Upload a CA certificate (PEM)");
    cert_add->add_option("-n,--name", o.policy_name, "Name of the CA")->required();
    cert_add->add_option("-p,--path", o.status_reason, "PEM file")->required()->check(CLI::ExistingFile);
    cert_add->callback(run([&o] {
        device_ca ca;
        try {
            ca = read_device_ca_file(o.policy_name, o.status_reason);
        } catch (const std::exception& e) {
            return fail(codes::bad_request, e.what());
        }
        auto db = open(o);
        db.reg->add_device_ca(ca, true); // a CA of the same name is replaced, as its file was before
        audit(*db.reg, "certificate-add", ca.name, "thumbprint=" + ca.thumbprint);
        return 0;
    }));
    certs->add_subcommand("list", "Print the uploaded CA names")->callback(run([&o] {
        auto db = open(o);
        for (auto& ca : db.reg->list_device_cas())
            std::cout << ca.name << "\n";
        return 0;
    }));
    auto* cert_delete = certs->add_subcommand("delete", "Remove an uploaded CA");
    cert_delete->add_option("-n,--name", o.policy_name, "Name of the CA")->required();
    cert_delete->callback(run([&o] {
        auto db = open(o);
        if (db.reg->delete_device_ca(o.policy_name) != registry_result::ok)
            return fail(codes::bad_request, "no CA named " + o.policy_name);
        audit(*db.reg, "certificate-delete", o.policy_name, "");
        return 0;
    }));
    auto* thumb = certs->add_subcommand("thumbprint", "Print the SHA-256 thumbprint of a certificate (PEM)");
    thumb->add_option("-p,--path", o.status_reason, "PEM file")->required()->check(CLI::ExistingFile);
    thumb->callback(run([&o] {
        std::cout << certificate_thumbprint(o.status_reason) << "\n";
        return 0;
    }));

    auto* migrate_cmd = app.add_subcommand(
        "migrate", "Copy this registry (default: the data directory's SQLite file) into an empty PostgreSQL registry: "
                   "devices with keys and thumbprints, policies with keys, settings, device CAs and the audit trail");
    migrate_cmd->add_option("--to", o.migrate_to, "Target registry: postgresql://user:password@host:port/database")
        ->required();
    migrate_cmd->add_flag("--force", o.force,
                          "Replace what the target already holds (devices, policies, settings, device CAs, audit)");
    migrate_cmd->callback(run([&o] { return migrate(o); }));

    auto* streams = app.add_subcommand("devicestream", "Device streams settings");
    streams->require_subcommand(1);
    streams->add_subcommand("show", "Print the streaming endpoint URL")->callback(run([&o] {
        auto db = open(o);
        std::cout << "wss://" << db.host_name << "/bridges/" << hub_name(*db.reg) << "\n";
        return 0;
    }));
}

} // namespace sg::relay
