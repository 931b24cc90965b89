#pragma once
// Admin subcommands (mirroring `az iot hub`): they work on the data directory directly, while
// the relay runs or before its first start, and print only their result on stdout.
#include <filesystem>
#include <string>

namespace CLI { class App; }

namespace sg::relay {

struct admin_options {
    std::filesystem::path data_dir;
    std::string registry; // --registry: "" = <data_dir>/registry.db, or postgresql://...
    std::string host_name;
    std::string device_id;
    std::string policy_name;
    std::string key_type = "primary";
    std::string auth_method = "shared_private_key";
    std::string primary_thumbprint, secondary_thumbprint;
    std::string status;
    std::string status_reason;
    std::string renew_key;
    std::string etag;
    std::string migrate_to; // migrate --to
    bool force = false;     // migrate --force
};

// Adds device-identity, show-connection-string, certificate, devicestream and migrate to app. `*result` receives the
// exit code of the command that ran; `*ran` is set when one did.
void add_admin_commands(CLI::App& app, admin_options& options, int* result, bool* ran);

} // namespace sg::relay
