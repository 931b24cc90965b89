#pragma once
// The relay's data directory: registry.db, the embedded CA and the settings admin commands
// read (the host name the relay was last started with).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include "relay/certificates.hpp"
#include "relay/registry.hpp"

namespace sg::relay {

struct listen_address {
    std::string host; // as given, without brackets; empty or 0.0.0.0/:: = every interface
    std::uint16_t port = 0;
    bool is_wildcard() const { return host.empty() || host == "0.0.0.0" || host == "::"; }
};
// "0.0.0.0:8443", "[::]:8443", "127.0.0.1:0", ":8443". Throws config_error.
listen_address parse_listen_address(const std::string& text);

// The HostName clients use: the explicit name, else the listen host (localhost for a wildcard),
// with ":port" unless the port is 443.
// "host:port" or "[v6]:port" (a bare IPv6 literal names no port).
bool names_port(const std::string& host);
std::string public_host_name(const std::string& explicit_name, const std::string& listen_host, std::uint16_t port);

// Opens the registry --registry names: empty (the default) is <dir>/registry.db, created with the
// directory (0700) on first use; postgresql://... (or postgres://...) is a shared database. The
// data directory is created either way: it holds the certificates. The first open of a data
// directory with device-cas/*.pem (from before device CAs moved into the registry) imports them
// (import_legacy_device_cas). Throws config_error for a URL that is neither.
std::unique_ptr<registry> open_registry(const std::filesystem::path& data_dir, const std::string& registry_url = {});

// The host name admin commands put in connection strings: --host-name, else what the relay
// recorded at its last start, else the default listen address's.
std::string recorded_host_name(registry& reg, const std::string& explicit_name);
std::string hub_name(registry& reg);

// The names the server certificate must carry for this host name.
std::vector<std::string> certificate_names(const std::string& host_name);

// The host of --public-url (wss://HOST:PORT, HOST:PORT, https://HOST), lower-cased, without
// port or brackets; empty when none is given or it is not of that form (the relay refuses it
// later). A cluster node's own address: clients dial it by that name (the device proxy's
// --relay, the stream URLs) while their tokens name the shared --host-name, so the relay's own
// certificate and the token scopes it accepts carry both.
std::string public_url_host(const std::string& public_url);

// ensure_relay_certificates under an exclusive lock on <data-dir>/.lock.
tls_files ensure_certificates(const std::filesystem::path& data_dir, const std::vector<std::string>& names);

} // namespace sg::relay
