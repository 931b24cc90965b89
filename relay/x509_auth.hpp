#pragma once
// X.509 device authentication: the client certificate a device presents in the TLS handshake,
// and the device CAs an operator uploads (<data-dir>/device-cas/NAME.pem).
#include <filesystem>
#include <string>
#include <vector>
#include <openssl/ssl.h>
#include "relay/auth.hpp"

namespace sg::relay {

// Reads ssl's client certificate (empty thumbprint when none) and verifies its chain against
// every CA in device_ca_dir.
peer_certificate inspect_peer_certificate(SSL* ssl, const std::filesystem::path& device_ca_dir);

std::filesystem::path device_ca_dir(const std::filesystem::path& data_dir);
// Copies a PEM CA certificate into the device CA directory. Throws std::runtime_error when the
// file is not a CA certificate or the name is not [A-Za-z0-9._-]{1,64}.
void add_device_ca(const std::filesystem::path& data_dir, const std::string& name, const std::filesystem::path& pem);
std::vector<std::string> list_device_cas(const std::filesystem::path& data_dir);
bool remove_device_ca(const std::filesystem::path& data_dir, const std::string& name);

// SHA-256 thumbprint (upper-case hex) of the first certificate in a PEM file.
std::string certificate_thumbprint(const std::filesystem::path& pem);

} // namespace sg::relay
