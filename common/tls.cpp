#include "common/tls.hpp"

#include <stdexcept>
#include <openssl/ssl.h>

namespace sg {
namespace ssl = boost::asio::ssl;

namespace {

// TLS 1.2 suites: forward secrecy (ECDHE) with an AEAD only.
constexpr const char* tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
constexpr const char* tls13_suites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

void harden(ssl::context& ctx, tls_version minimum)
{
    SSL_CTX* native = ctx.native_handle();
    SSL_CTX_set_min_proto_version(native, minimum == tls_version::v1_3 ? TLS1_3_VERSION : TLS1_2_VERSION);
    SSL_CTX_set_options(native, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                    SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_set_cipher_list(native, tls12_ciphers) != 1 ||
        SSL_CTX_set_ciphersuites(native, tls13_suites) != 1)
        throw std::runtime_error("cannot configure TLS cipher suites");
    SSL_CTX_set1_groups_list(native, "X25519:P-256:P-384");
}

} // namespace

ssl::context make_client_tls_context(const std::optional<std::filesystem::path>& ca_file, tls_version minimum)
{
    ssl::context ctx(ssl::context::tls_client);
    harden(ctx, minimum);
    ctx.set_verify_mode(ssl::verify_peer);
    boost::system::error_code ec;
    if (ca_file && !ca_file->empty()) {
        ctx.load_verify_file(ca_file->string(), ec);
        if (ec)
            throw std::runtime_error("cannot load CA file " + ca_file->string() + ": " + ec.message());
    } else {
        ctx.set_default_verify_paths(ec);
        if (ec)
            throw std::runtime_error("cannot load the system certificate store: " + ec.message());
    }
    return ctx;
}

ssl::context make_server_tls_context(const std::filesystem::path& certificate_chain,
                                     const std::filesystem::path& private_key, tls_version minimum,
                                     bool request_client_certificate)
{
    ssl::context ctx(ssl::context::tls_server);
    harden(ctx, minimum);
    if (request_client_certificate) {
        // Accept any certificate here: the relay checks it against the device registry later,
        // and clients without one (SAS devices, services) must still get through.
        SSL_CTX_set_verify(ctx.native_handle(), SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
        static const unsigned char session_context[] = "streamgate";
        SSL_CTX_set_session_id_context(ctx.native_handle(), session_context, sizeof session_context - 1);
    }
    boost::system::error_code ec;
    ctx.use_certificate_chain_file(certificate_chain.string(), ec);
    if (ec)
        throw std::runtime_error("cannot load certificate " + certificate_chain.string() + ": " + ec.message());
    ctx.use_private_key_file(private_key.string(), ssl::context::pem, ec);
    if (ec)
        throw std::runtime_error("cannot load private key " + private_key.string() + ": " + ec.message());
    return ctx;
}

void use_client_certificate(ssl::context& ctx, const std::filesystem::path& certificate_chain,
                            const std::filesystem::path& private_key)
{
    boost::system::error_code ec;
    ctx.use_certificate_chain_file(certificate_chain.string(), ec);
    if (ec)
        throw std::runtime_error("cannot load client certificate " + certificate_chain.string() + ": " + ec.message());
    ctx.use_private_key_file(private_key.string(), ssl::context::pem, ec);
    if (ec)
        throw std::runtime_error("cannot load client key " + private_key.string() + ": " + ec.message());
}

} // namespace sg
