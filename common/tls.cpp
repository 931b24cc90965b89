#include "common/tls.hpp"

#include <map>
#include <mutex>
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

// The newest session per "host:port", owned by the SSL_CTX (freed with it).
struct session_cache {
    std::mutex mutex;
    std::map<std::string, SSL_SESSION*> sessions;
    ~session_cache()
    {
        for (auto& [key, session] : sessions)
            SSL_SESSION_free(session);
    }
};

void free_session_cache(void*, void* cache, CRYPTO_EX_DATA*, int, long, void*)
{
    delete static_cast<session_cache*>(cache);
}

int ctx_cache_index()
{
    static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_session_cache);
    return index;
}

// The "host:port" a connection was opened for (owned by the SSL, freed with it).
void free_key(void*, void* key, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<std::string*>(key); }

int ssl_key_index()
{
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_key);
    return index;
}

int remember_session(SSL* connection, SSL_SESSION* session)
{
    auto* key = static_cast<std::string*>(SSL_get_ex_data(connection, ssl_key_index()));
    auto* cache = static_cast<session_cache*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(connection), ctx_cache_index()));
    if (!key || !cache)
        return 0;
    // A copy: OpenSSL marks the connection's own session object not resumable when the
    // connection ends without close_notify (an aborted stream), which must not spoil the cache.
    SSL_SESSION* copy = SSL_SESSION_dup(session);
    if (!copy)
        return 0;
    std::lock_guard lock(cache->mutex);
    auto& slot = cache->sessions[*key];
    if (slot)
        SSL_SESSION_free(slot);
    slot = copy;
    return 0; // OpenSSL keeps (and frees) its own reference
}

void enable_session_resumption(ssl::context& ctx)
{
    SSL_CTX* native = ctx.native_handle();
    SSL_CTX_set_ex_data(native, ctx_cache_index(), new session_cache);
    SSL_CTX_set_session_cache_mode(native, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(native, remember_session);
}

} // namespace

void offer_session(SSL* connection, const std::string& host, std::uint16_t port)
{
    auto* cache = static_cast<session_cache*>(SSL_CTX_get_ex_data(SSL_get_SSL_CTX(connection), ctx_cache_index()));
    if (!cache)
        return;
    std::string key = host + ":" + std::to_string(port);
    {
        std::lock_guard lock(cache->mutex);
        auto it = cache->sessions.find(key);
        // A copy, as in remember_session: a connection that ends without close_notify marks
        // the session object it used not resumable, and the next connection would pay a full
        // handshake.
        if (it != cache->sessions.end() && SSL_SESSION_is_resumable(it->second))
            if (SSL_SESSION* copy = SSL_SESSION_dup(it->second)) {
                SSL_set_session(connection, copy); // takes its own reference
                SSL_SESSION_free(copy);
            }
    }
    delete static_cast<std::string*>(SSL_get_ex_data(connection, ssl_key_index()));
    SSL_set_ex_data(connection, ssl_key_index(), new std::string(std::move(key)));
}

ssl::context make_client_tls_context(const std::optional<std::filesystem::path>& ca_file, tls_version minimum)
{
    ssl::context ctx(ssl::context::tls_client);
    harden(ctx, minimum);
    ctx.set_verify_mode(ssl::verify_peer);
    enable_session_resumption(ctx);
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
    // Clients keep only the newest session per relay: one TLS 1.3 ticket per handshake is enough.
    SSL_CTX_set_num_tickets(ctx.native_handle(), 1);
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
    // A resumed session carries the device's certificate but not the chain it sent, which the
    // relay may need to reach an uploaded CA: devices that authenticate by certificate always
    // make full handshakes.
    SSL_CTX_set_session_cache_mode(ctx.native_handle(), SSL_SESS_CACHE_OFF);
    SSL_CTX_sess_set_new_cb(ctx.native_handle(), nullptr);
}

} // namespace sg
