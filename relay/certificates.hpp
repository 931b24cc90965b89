#pragma once
// The relay's embedded certificate authority: with no --cert/--key, the first start makes
// <data-dir>/ca.pem (+ ca.key) and a server certificate signed by it; later starts reuse them.
#include <filesystem>
#include <string>
#include <vector>

namespace sg::relay {

struct tls_files {
    std::filesystem::path certificate_chain; // server certificate (PEM)
    std::filesystem::path private_key;       // server key (PEM, 0600)
    std::filesystem::path ca_certificate;    // the CA clients trust with --ca-file
};

// Ensures an ECDSA P-256 CA (10 years) and an ECDSA P-256 server certificate (about 2 years)
// whose subjectAltName holds localhost, 127.0.0.1, ::1 and every entry of extra_names (an IP
// literal becomes an IP SAN, anything else a DNS SAN). The server certificate is re-issued
// (by the same CA) when a name is missing from it or it expires within 30 days.
// Keys are written 0600, the directory is made 0700. Throws std::runtime_error on failure.
tls_files ensure_relay_certificates(const std::filesystem::path& data_dir,
                                    const std::vector<std::string>& extra_names);

} // namespace sg::relay
