#pragma once
// X.509 device authentication: the client certificate a device presents in the TLS handshake,
// and the device CAs an operator uploads (`certificate add`), stored in the registry (table
// device_cas) so every node of a cluster trusts the same ones.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <openssl/ssl.h>
#include "relay/auth.hpp"
#include "relay/registry.hpp"

namespace sg::relay {

// The device CAs TLS verification trusts: built from the registry's device_cas and rebuilt when
// the registry reports a change (external_change_counter: another process added or deleted a
// CA, on this node or another), so a deleted CA stops authenticating everywhere. Thread-safe.
class device_ca_store {
public:
    // Reads ssl's client certificate (empty thumbprint when none) and verifies its chain against
    // the registry's device CAs, naming the one it ends at. When the registry cannot be read, the
    // CAs last read are used (and read again on the next call).
    peer_certificate inspect(SSL* ssl, registry& reg);

    struct trusted; // the store and which device CA each of its certificates came from

private:
    std::shared_ptr<const trusted> current(registry& reg);

    std::mutex mutex_;
    std::shared_ptr<const trusted> trusted_; // null: nothing read yet, or no CA
    bool loaded_ = false;
    std::uint64_t loaded_at_change_ = 0;
};

// Checks a CA before it is stored: name [A-Za-z0-9._-]{1,64}, one or more PEM certificates, every
// one a CA (basicConstraints CA:TRUE). `source` names where the PEM came from in errors. Returns
// it with its thumbprint (of the first certificate); throws std::runtime_error saying what is wrong.
device_ca make_device_ca(const std::string& name, const std::string& pem, const std::string& source);
device_ca read_device_ca_file(const std::string& name, const std::filesystem::path& pem);

// Where device CAs lived before the registry held them (no longer read, except once, below).
std::filesystem::path device_ca_dir(const std::filesystem::path& data_dir);
// Upgrades: the first time a data directory with device-cas/*.pem is opened, they are imported
// into `reg` if its device_cas table is empty (logged), and device-cas/MOVED-TO-REGISTRY.txt is
// written so it never happens again. Returns how many were imported.
std::size_t import_legacy_device_cas(registry& reg, const std::filesystem::path& data_dir);

// SHA-256 thumbprint (upper-case hex) of the first certificate in a PEM file.
std::string certificate_thumbprint(const std::filesystem::path& pem);

} // namespace sg::relay
