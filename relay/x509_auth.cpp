#include "relay/x509_auth.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include "common/crypto.hpp"

namespace sg::relay {

namespace {

struct x509_free { void operator()(X509* x) const { X509_free(x); } };
struct store_free { void operator()(X509_STORE* s) const { X509_STORE_free(s); } };
struct store_ctx_free { void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); } };
struct bio_free { void operator()(BIO* b) const { BIO_free(b); } };
using x509_ptr = std::unique_ptr<X509, x509_free>;

std::string thumbprint_of(X509* cert)
{
    int length = i2d_X509(cert, nullptr);
    if (length <= 0)
        return {};
    std::string der(static_cast<std::size_t>(length), '\0');
    auto* out = reinterpret_cast<unsigned char*>(der.data());
    i2d_X509(cert, &out);
    return hex_upper(sha256(der));
}

std::vector<x509_ptr> read_certificates(const std::filesystem::path& file)
{
    std::vector<x509_ptr> out;
    std::unique_ptr<BIO, bio_free> bio(BIO_new_file(file.c_str(), "r"));
    if (!bio)
        return out;
    while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr))
        out.emplace_back(cert);
    return out;
}

bool valid_name(const std::string& name)
{
    if (name.empty() || name.size() > 64)
        return false;
    for (unsigned char c : name)
        if (!(std::isalnum(c) || c == '.' || c == '_' || c == '-'))
            return false;
    return name != "." && name != "..";
}

} // namespace

std::filesystem::path device_ca_dir(const std::filesystem::path& data_dir) { return data_dir / "device-cas"; }

peer_certificate inspect_peer_certificate(SSL* ssl, const std::filesystem::path& ca_dir)
{
    peer_certificate out;
    x509_ptr leaf(SSL_get1_peer_certificate(ssl));
    if (!leaf)
        return out;
    out.thumbprint = thumbprint_of(leaf.get());
    char cn[256] = {};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(leaf.get()), NID_commonName, cn, sizeof cn) > 0)
        out.common_name = cn;

    std::unique_ptr<X509_STORE, store_free> store(X509_STORE_new());
    bool any_ca = false;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(ca_dir, ec)) {
        if (entry.path().extension() != ".pem")
            continue;
        for (auto& cert : read_certificates(entry.path()))
            any_ca = X509_STORE_add_cert(store.get(), cert.get()) == 1 || any_ca;
    }
    if (!any_ca)
        return out;
    std::unique_ptr<X509_STORE_CTX, store_ctx_free> ctx(X509_STORE_CTX_new());
    // The chain the device sent (server side: without the leaf) supplies intermediates.
    if (X509_STORE_CTX_init(ctx.get(), store.get(), leaf.get(), SSL_get_peer_cert_chain(ssl)) == 1)
        out.chain_trusted = X509_verify_cert(ctx.get()) == 1;
    return out;
}

void add_device_ca(const std::filesystem::path& data_dir, const std::string& name, const std::filesystem::path& pem)
{
    if (!valid_name(name))
        throw std::runtime_error("certificate name must be 1-64 letters, digits, '.', '_' or '-'");
    auto certs = read_certificates(pem);
    if (certs.empty())
        throw std::runtime_error("no PEM certificate in " + pem.string());
    for (auto& cert : certs)
        if (X509_check_ca(cert.get()) == 0)
            throw std::runtime_error(pem.string() + " holds a certificate that is not a CA (basicConstraints CA:TRUE)");
    auto dir = device_ca_dir(data_dir);
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(pem, dir / (name + ".pem"), std::filesystem::copy_options::overwrite_existing);
}

std::vector<std::string> list_device_cas(const std::filesystem::path& data_dir)
{
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(device_ca_dir(data_dir), ec))
        if (entry.path().extension() == ".pem")
            out.push_back(entry.path().stem().string());
    std::sort(out.begin(), out.end());
    return out;
}

bool remove_device_ca(const std::filesystem::path& data_dir, const std::string& name)
{
    return valid_name(name) && std::filesystem::remove(device_ca_dir(data_dir) / (name + ".pem"));
}

std::string certificate_thumbprint(const std::filesystem::path& pem)
{
    auto certs = read_certificates(pem);
    if (certs.empty())
        throw std::runtime_error("no PEM certificate in " + pem.string());
    return thumbprint_of(certs.front().get());
}

} // namespace sg::relay
