#pragma once
// TLS contexts for every Streamgate connection: TLS 1.2 minimum (1.3 on request), ECDHE with
// AES-GCM or ChaCha20 only, no compression, no renegotiation.
#include <filesystem>
#include <optional>
#include <boost/asio/ssl/context.hpp>

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

// Adds a client certificate (device X.509 authentication) to a client context.
void use_client_certificate(boost::asio::ssl::context& ctx, const std::filesystem::path& certificate_chain,
                            const std::filesystem::path& private_key);

} // namespace sg
