#pragma once
// TLS contexts for every Streamgate connection: TLS 1.2 minimum (1.3 on request), ECDHE with
// AES-GCM or ChaCha20 only, no compression, no renegotiation.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <boost/asio/ssl/context.hpp>

typedef struct ssl_st SSL;

namespace sg {

enum class tls_version { v1_2, v1_3 };

// A client context that verifies the relay against ca_file, or the system store when empty.
boost::asio::ssl::context make_client_tls_context(const std::optional<std::filesystem::path>& ca_file,
                                                  tls_version minimum = tls_version::v1_2);

// With request_client_certificate the server asks for (but does not require) a client
// certificate; the application decides what it proves (X.509 device authentication).
boost::asio::ssl::context make_server_tls_context(const std::filesystem::path& certificate_chain,
                                                  const std::filesystem::path& private_key,
                                                  tls_version minimum = tls_version::v1_2,
                                                  bool request_client_certificate = false);

// A client context made above remembers the last TLS session (ticket) per relay host:port.
// Call before the handshake: offers that session, so the handshake is resumed (no certificate
// signature or verification) when the relay still accepts it; a full handshake otherwise.
void offer_session(SSL* connection, const std::string& host, std::uint16_t port);

// Adds a client certificate (device X.509 authentication) to a client context; such a context
// makes full handshakes only (a resumed session would not carry the certificate chain).
void use_client_certificate(boost::asio::ssl::context& ctx, const std::filesystem::path& certificate_chain,
                            const std::filesystem::path& private_key);

} // namespace sg
