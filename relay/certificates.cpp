// The embedded CA. ca.pem is what clients are told to trust, so it is created once and never
// replaced behind their back; the server certificate is cheap and re-issued whenever it no
// longer fits (names, expiry, key or issuer mismatch).
#include "relay/certificates.hpp"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <sys/stat.h>
#include <unistd.h>

namespace sg::relay {
namespace {

namespace fs = std::filesystem;

template <auto Fn> struct deleter {
    template <class T> void operator()(T* p) const { Fn(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, deleter<EVP_PKEY_free>>;
using x509_ptr = std::unique_ptr<X509, deleter<X509_free>>;
using bio_ptr = std::unique_ptr<BIO, deleter<BIO_free_all>>;
using bn_ptr = std::unique_ptr<BIGNUM, deleter<BN_free>>;
using asn1_int_ptr = std::unique_ptr<ASN1_INTEGER, deleter<ASN1_INTEGER_free>>;
using name_ptr = std::unique_ptr<X509_NAME, deleter<X509_NAME_free>>;
using ext_ptr = std::unique_ptr<X509_EXTENSION, deleter<X509_EXTENSION_free>>;
using gen_names_ptr = std::unique_ptr<GENERAL_NAMES, deleter<GENERAL_NAMES_free>>;
using gen_name_ptr = std::unique_ptr<GENERAL_NAME, deleter<GENERAL_NAME_free>>;
using octets_ptr = std::unique_ptr<ASN1_OCTET_STRING, deleter<ASN1_OCTET_STRING_free>>;
using ia5_ptr = std::unique_ptr<ASN1_IA5STRING, deleter<ASN1_IA5STRING_free>>;

constexpr long ca_days = 3650;
constexpr long server_days = 730;
constexpr long renew_before_days = 30;

[[noreturn]] void fail(const std::string& what)
{
    std::string msg = "certificates: " + what;
    if (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        msg += ": ";
        msg += buf;
    }
    ERR_clear_error();
    throw std::runtime_error(msg);
}

// A requested subjectAltName: exactly one of dns / ip (raw 4 or 16 bytes) is set.
struct san {
    std::string dns;
    std::string ip;
};

std::optional<std::string> parse_ip(std::string text)
{
    if (text.size() > 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
    unsigned char buf[16];
    if (inet_pton(AF_INET, text.c_str(), buf) == 1) return std::string(reinterpret_cast<char*>(buf), 4);
    if (inet_pton(AF_INET6, text.c_str(), buf) == 1) return std::string(reinterpret_cast<char*>(buf), 16);
    return std::nullopt;
}

std::vector<san> wanted_names(const std::vector<std::string>& extra_names)
{
    std::vector<std::string> all = {"localhost", "127.0.0.1", "::1"};
    all.insert(all.end(), extra_names.begin(), extra_names.end());
    std::vector<san> out;
    for (const auto& name : all) {
        if (name.empty()) continue;
        san s;
        if (auto ip = parse_ip(name)) {
            s.ip = *ip;
        } else {
            for (unsigned char c : name)
                if (c <= ' ' || c >= 0x7f) fail("invalid host name for the server certificate: " + name);
            // DNS names compare case-insensitively; storing them lower-case keeps that simple.
            for (unsigned char c : name) s.dns += static_cast<char>(std::tolower(c));
        }
        bool duplicate = false;
        for (const auto& o : out) duplicate = duplicate || (o.dns == s.dns && o.ip == s.ip);
        if (!duplicate) out.push_back(std::move(s));
    }
    return out;
}

std::vector<san> names_in(X509* cert)
{
    std::vector<san> out;
    gen_names_ptr names(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
    if (!names) return out;
    for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
        const GENERAL_NAME* g = sk_GENERAL_NAME_value(names.get(), i);
        san s;
        if (g->type == GEN_DNS) {
            auto data = reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName));
            for (int k = 0; k < ASN1_STRING_length(g->d.dNSName); ++k)
                s.dns += static_cast<char>(std::tolower(static_cast<unsigned char>(data[k])));
        } else if (g->type == GEN_IPADD) {
            s.ip.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.iPAddress)),
                        static_cast<std::size_t>(ASN1_STRING_length(g->d.iPAddress)));
        } else {
            continue;
        }
        out.push_back(std::move(s));
    }
    return out;
}

std::string read_file(const fs::path& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Written to a temporary (created with its final mode) and renamed, so a crash or a concurrent
// reader never sees half a PEM and a key is never readable by others, not even for a moment.
void write_file_atomically(const fs::path& path, const std::string& content, mode_t mode)
{
    fs::path tmp = path;
    tmp += ".tmp-" + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) throw std::runtime_error("certificates: cannot create " + tmp.string() + ": " + std::strerror(errno));
    ::fchmod(fd, mode); // a stale temporary may have had another mode
    std::size_t done = 0;
    while (done < content.size()) {
        ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            int err = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            throw std::runtime_error("certificates: cannot write " + path.string() + ": " + std::strerror(err));
        }
        done += static_cast<std::size_t>(n);
    }
    bool ok = ::fsync(fd) == 0;
    ok = ::close(fd) == 0 && ok;
    if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        throw std::runtime_error("certificates: cannot write " + path.string() + ": " + std::strerror(err));
    }
}

bio_ptr memory_bio(const std::string& data)
{
    bio_ptr bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
    if (!bio) fail("out of memory");
    return bio;
}

x509_ptr load_certificate(const fs::path& path)
{
    if (!fs::exists(path)) return nullptr;
    auto data = read_file(path);
    x509_ptr cert(PEM_read_bio_X509(memory_bio(data).get(), nullptr, nullptr, nullptr));
    ERR_clear_error();
    return cert;
}

pkey_ptr load_key(const fs::path& path)
{
    if (!fs::exists(path)) return nullptr;
    ::chmod(path.c_str(), 0600);
    auto data = read_file(path);
    // A callback that refuses passwords: an encrypted key must not make the relay prompt on a tty.
    auto no_password = [](char*, int, int, void*) { return -1; };
    pkey_ptr key(PEM_read_bio_PrivateKey(memory_bio(data).get(), nullptr, no_password, nullptr));
    OPENSSL_cleanse(data.data(), data.size());
    ERR_clear_error();
    return key;
}

void save_certificate(const fs::path& path, X509* cert)
{
    bio_ptr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) fail("cannot encode " + path.string());
    char* p = nullptr;
    long n = BIO_get_mem_data(bio.get(), &p);
    // Certificates are public; readable copies are what users hand to clients.
    write_file_atomically(path, std::string(p, static_cast<std::size_t>(n)), 0644);
}

void save_key(const fs::path& path, EVP_PKEY* key)
{
    bio_ptr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
        fail("cannot encode " + path.string());
    char* p = nullptr;
    long n = BIO_get_mem_data(bio.get(), &p);
    std::string pem(p, static_cast<std::size_t>(n));
    write_file_atomically(path, pem, 0600);
    OPENSSL_cleanse(pem.data(), pem.size());
}

pkey_ptr new_key()
{
    pkey_ptr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
    if (!key) fail("cannot generate an EC P-256 key");
    return key;
}

void add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value)
{
    ext_ptr ext(X509V3_EXT_conf_nid(nullptr, ctx, nid, value));
    if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) fail(std::string("cannot add extension ") + OBJ_nid2sn(nid));
}

void add_subject_alt_names(X509* cert, const std::vector<san>& names)
{
    gen_names_ptr gens(sk_GENERAL_NAME_new_null());
    if (!gens) fail("out of memory");
    for (const auto& n : names) {
        gen_name_ptr g(GENERAL_NAME_new());
        if (!g) fail("out of memory");
        if (!n.ip.empty()) {
            octets_ptr ip(ASN1_OCTET_STRING_new());
            if (!ip || ASN1_OCTET_STRING_set(ip.get(), reinterpret_cast<const unsigned char*>(n.ip.data()),
                                             static_cast<int>(n.ip.size())) != 1)
                fail("out of memory");
            GENERAL_NAME_set0_value(g.get(), GEN_IPADD, ip.release());
        } else {
            ia5_ptr dns(ASN1_IA5STRING_new());
            if (!dns || ASN1_STRING_set(dns.get(), n.dns.data(), static_cast<int>(n.dns.size())) != 1)
                fail("out of memory");
            GENERAL_NAME_set0_value(g.get(), GEN_DNS, dns.release());
        }
        if (!sk_GENERAL_NAME_push(gens.get(), g.get())) fail("out of memory");
        g.release();
    }
    if (X509_add1_ext_i2d(cert, NID_subject_alt_name, gens.get(), 0, X509V3_ADD_DEFAULT) != 1)
        fail("cannot add subjectAltName");
}

// The common part of both certificates: v3, random positive 128-bit serial, validity, subject.
x509_ptr new_certificate(EVP_PKEY* subject_key, const std::string& common_name, long days)
{
    x509_ptr cert(X509_new());
    if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) fail("out of memory");

    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof serial) != 1) fail("no randomness for the serial number");
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive and a full 16 bytes
    bn_ptr bn(BN_bin2bn(serial, sizeof serial, nullptr));
    asn1_int_ptr asn1_serial(bn ? BN_to_ASN1_INTEGER(bn.get(), nullptr) : nullptr);
    if (!asn1_serial || X509_set_serialNumber(cert.get(), asn1_serial.get()) != 1) fail("cannot set serial number");

    // Backdated an hour so a client whose clock is slightly behind still accepts it.
    if (!X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600) ||
        !X509_time_adj_ex(X509_getm_notAfter(cert.get()), static_cast<int>(days), 0, nullptr))
        fail("cannot set validity");

    name_ptr name(X509_NAME_new());
    if (!name ||
        X509_NAME_add_entry_by_txt(name.get(), "O", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>("Streamgate"), -1, -1, 0) != 1 ||
        X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(common_name.c_str()), -1, -1, 0) != 1 ||
        X509_set_subject_name(cert.get(), name.get()) != 1)
        fail("cannot set subject name");
    if (X509_set_pubkey(cert.get(), subject_key) != 1) fail("cannot set public key");
    return cert;
}

x509_ptr issue_ca(EVP_PKEY* key)
{
    // A random suffix keeps two installations' CAs apart in trust stores and in error messages.
    unsigned char tag[4];
    if (RAND_bytes(tag, sizeof tag) != 1) fail("no randomness");
    char hex[9];
    std::snprintf(hex, sizeof hex, "%02X%02X%02X%02X", tag[0], tag[1], tag[2], tag[3]);
    auto cert = new_certificate(key, std::string("Streamgate relay CA ") + hex, ca_days);
    if (X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get())) != 1) fail("cannot set issuer");

    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
    add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash");
    if (X509_sign(cert.get(), key, EVP_sha256()) <= 0) fail("cannot sign the CA certificate");
    return cert;
}

x509_ptr issue_server(EVP_PKEY* key, X509* ca, EVP_PKEY* ca_key, const std::vector<san>& names)
{
    auto cert = new_certificate(key, "localhost", server_days);
    if (X509_set_issuer_name(cert.get(), X509_get_subject_name(ca)) != 1) fail("cannot set issuer");

    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca, cert.get(), nullptr, nullptr, 0);
    add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:FALSE");
    add_extension(cert.get(), &ctx, NID_key_usage, "critical,digitalSignature");
    add_extension(cert.get(), &ctx, NID_ext_key_usage, "serverAuth");
    add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash");
    add_extension(cert.get(), &ctx, NID_authority_key_identifier, "keyid:always");
    add_subject_alt_names(cert.get(), names);
    if (X509_sign(cert.get(), ca_key, EVP_sha256()) <= 0) fail("cannot sign the server certificate");
    return cert;
}

bool server_certificate_fits(X509* cert, EVP_PKEY* key, X509* ca, EVP_PKEY* ca_key, const std::vector<san>& wanted)
{
    if (!cert || !key) return false;
    bool fits = X509_check_private_key(cert, key) == 1 && X509_verify(cert, ca_key) == 1 &&
                X509_check_issued(ca, cert) == X509_V_OK;
    std::time_t renew_at = std::time(nullptr) + renew_before_days * 24 * 3600;
    fits = fits && X509_cmp_time(X509_get0_notAfter(cert), &renew_at) > 0;
    ERR_clear_error();
    if (!fits) return false;
    auto present = names_in(cert);
    for (const auto& w : wanted) {
        bool found = false;
        for (const auto& p : present) found = found || (p.dns == w.dns && p.ip == w.ip);
        if (!found) return false;
    }
    return true;
}

} // namespace

tls_files ensure_relay_certificates(const fs::path& data_dir, const std::vector<std::string>& extra_names)
{
    std::error_code ec;
    fs::create_directories(data_dir, ec);
    if (ec) throw std::runtime_error("certificates: cannot create " + data_dir.string() + ": " + ec.message());
    if (::chmod(data_dir.c_str(), 0700) != 0)
        throw std::runtime_error("certificates: cannot make " + data_dir.string() + " private: " + std::strerror(errno));

    const tls_files files{data_dir / "server.pem", data_dir / "server.key", data_dir / "ca.pem"};
    const fs::path ca_key_file = data_dir / "ca.key";
    const auto names = wanted_names(extra_names);

    // ca.pem is written last, so it decides whether a CA exists; a CA certificate without its
    // key cannot be reused and must not be silently replaced (clients trust it).
    x509_ptr ca = load_certificate(files.ca_certificate);
    pkey_ptr ca_key;
    if (ca) {
        ca_key = load_key(ca_key_file);
        if (!ca_key || X509_check_private_key(ca.get(), ca_key.get()) != 1) {
            ERR_clear_error();
            throw std::runtime_error("certificates: " + ca_key_file.string() + " is missing or does not match " +
                                     files.ca_certificate.string() +
                                     "; restore it, or remove both to create a new CA that clients must trust again");
        }
    } else if (fs::exists(files.ca_certificate)) {
        throw std::runtime_error("certificates: " + files.ca_certificate.string() + " is not a PEM certificate");
    } else {
        ca_key = new_key();
        ca = issue_ca(ca_key.get());
        save_key(ca_key_file, ca_key.get());
        save_certificate(files.ca_certificate, ca.get());
    }

    x509_ptr server = load_certificate(files.certificate_chain);
    pkey_ptr server_key = load_key(files.private_key);
    if (!server_certificate_fits(server.get(), server_key.get(), ca.get(), ca_key.get(), names)) {
        // A fresh key on every re-issue costs nothing and limits what an old leaked key is worth.
        server_key = new_key();
        server = issue_server(server_key.get(), ca.get(), ca_key.get(), names);
        save_key(files.private_key, server_key.get());
        save_certificate(files.certificate_chain, server.get());
    }
    return files;
}

} // namespace sg::relay
