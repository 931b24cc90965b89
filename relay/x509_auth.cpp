#include "relay/x509_auth.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <vector>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <spdlog/spdlog.h>
#include "common/crypto.hpp"
#include "common/log.hpp"

namespace sg::relay {

namespace {

struct x509_free { void operator()(X509* x) const { X509_free(x); } };
struct store_free { void operator()(X509_STORE* s) const { X509_STORE_free(s); } };
struct store_ctx_free { void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); } };
struct bio_free { void operator()(BIO* b) const { BIO_free(b); } };
using x509_ptr = std::unique_ptr<X509, x509_free>;
using bio_ptr = std::unique_ptr<BIO, bio_free>;

constexpr const char* moved_marker = "MOVED-TO-REGISTRY.txt";

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

// Every CERTIFICATE block of a PEM text (other blocks, such as a key, are skipped).
std::vector<x509_ptr> parse_certificates(const std::string& pem)
{
    std::vector<x509_ptr> out;
    bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    while (bio) {
        X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
        if (!cert)
            break;
        out.emplace_back(cert);
    }
    ERR_clear_error(); // the end of the text reads as an error
    return out;
}

std::string read_text(const std::filesystem::path& file)
{
    std::ifstream in(file, std::ios::binary);
    if (!in)
        throw std::runtime_error("cannot read " + file.string());
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string to_pem(X509* cert)
{
    bio_ptr bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1)
        throw std::runtime_error("cannot encode a certificate as PEM");
    char* p = nullptr;
    long n = BIO_get_mem_data(bio.get(), &p);
    return std::string(p, static_cast<std::size_t>(n));
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

struct device_ca_store::trusted {
    std::unique_ptr<X509_STORE, store_free> store{X509_STORE_new()};
    // Thumbprint of every certificate of every device CA -> that CA (name, registry thumbprint).
    std::unordered_map<std::string, std::pair<std::string, std::string>> origin;
};

namespace {

std::shared_ptr<const device_ca_store::trusted> build_store(const std::vector<device_ca>& cas)
{
    auto out = std::make_shared<device_ca_store::trusted>();
    for (const auto& ca : cas)
        for (auto& cert : parse_certificates(ca.pem)) {
            X509_STORE_add_cert(out->store.get(), cert.get()); // the same certificate twice is no error
            out->origin.try_emplace(thumbprint_of(cert.get()), ca.name, ca.thumbprint);
        }
    ERR_clear_error();
    if (out->origin.empty())
        return nullptr;
    return out;
}

} // namespace

std::shared_ptr<const device_ca_store::trusted> device_ca_store::current(registry& reg)
{
    const auto change = reg.external_change_counter(); // read first: a change during the read is seen next time
    std::lock_guard lock(mutex_);
    if (loaded_ && change == loaded_at_change_)
        return trusted_;
    try {
        trusted_ = build_store(reg.list_device_cas());
        loaded_ = true;
        loaded_at_change_ = change;
    } catch (const std::exception&) {
        // The registry is unavailable: the device's own look-up fails with 503002 anyway. The CAs
        // last read stay, and the next connection reads them again.
        loaded_ = false;
    }
    return trusted_;
}

peer_certificate device_ca_store::inspect(SSL* ssl, registry& reg)
{
    peer_certificate out;
    x509_ptr leaf(SSL_get1_peer_certificate(ssl));
    if (!leaf)
        return out;
    out.thumbprint = thumbprint_of(leaf.get());
    char cn[256] = {};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(leaf.get()), NID_commonName, cn, sizeof cn) > 0)
        out.common_name = cn;

    auto cas = current(reg);
    if (!cas)
        return out;
    std::unique_ptr<X509_STORE_CTX, store_ctx_free> ctx(X509_STORE_CTX_new());
    // The chain the device sent (server side: without the leaf) supplies intermediates.
    if (X509_STORE_CTX_init(ctx.get(), cas->store.get(), leaf.get(), SSL_get_peer_cert_chain(ssl)) == 1 &&
        X509_verify_cert(ctx.get()) == 1) {
        STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
        auto anchor = cas->origin.find(thumbprint_of(sk_X509_value(chain, sk_X509_num(chain) - 1)));
        if (anchor != cas->origin.end()) {
            out.chain_trusted = true;
            std::tie(out.ca_name, out.ca_thumbprint) = anchor->second;
        }
    }
    ERR_clear_error();
    return out;
}

device_ca make_device_ca(const std::string& name, const std::string& pem, const std::string& source)
{
    if (!valid_name(name))
        throw std::runtime_error("certificate name must be 1-64 letters, digits, '.', '_' or '-'");
    auto certs = parse_certificates(pem);
    if (certs.empty())
        throw std::runtime_error("no PEM certificate in " + source);
    device_ca out;
    out.name = name;
    for (auto& cert : certs) {
        if (X509_check_ca(cert.get()) == 0)
            throw std::runtime_error(source + " holds a certificate that is not a CA (basicConstraints CA:TRUE)");
        out.pem += to_pem(cert.get()); // only the certificates: a key in the same file is not stored
    }
    out.thumbprint = thumbprint_of(certs.front().get());
    return out;
}

device_ca read_device_ca_file(const std::string& name, const std::filesystem::path& pem)
{
    return make_device_ca(name, read_text(pem), pem.string());
}

std::filesystem::path device_ca_dir(const std::filesystem::path& data_dir) { return data_dir / "device-cas"; }

std::size_t import_legacy_device_cas(registry& reg, const std::filesystem::path& data_dir)
{
    const auto dir = device_ca_dir(data_dir);
    std::error_code ec;
    if (std::filesystem::exists(dir / moved_marker, ec))
        return 0;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
        if (entry.path().extension() == ".pem")
            files.push_back(entry.path());
    if (files.empty())
        return 0;
    std::sort(files.begin(), files.end());

    auto log = make_logger("relay");
    std::size_t imported = 0;
    const auto stored = reg.list_device_cas().size();
    if (stored > 0) {
        log->info("event=DeviceCasNotImported dir={} files={} reason=\"registry {} already holds {} device CAs\"",
                  dir.string(), files.size(), reg.describe(), stored);
    } else {
        for (const auto& file : files) {
            try {
                auto ca = read_device_ca_file(file.stem().string(), file);
                if (reg.add_device_ca(ca, false) != registry_result::ok)
                    continue; // another process imported it at the same moment
                reg.append_audit({0, {}, "streamgate-relay upgrade", "certificate-add", ca.name,
                                  "thumbprint=" + ca.thumbprint + " from=" + file.string()});
                log->info("event=DeviceCaImported name={} thumbprint={} file={}", ca.name, ca.thumbprint, file.string());
                ++imported;
            } catch (const registry_unavailable&) {
                throw;
            } catch (const std::exception& e) {
                log->warn("event=DeviceCaNotImported file={} reason=\"{}\"", file.string(), e.what());
            }
        }
        log->info("event=DeviceCasImported count={} dir={} registry=\"{}\"", imported, dir.string(), reg.describe());
    }
    std::ofstream marker(dir / moved_marker);
    marker << "The .pem files in this directory are no longer read: device CAs live in the registry\n"
              "(" << reg.describe() << ") since " << utc_now_iso8601() << ", when "
           << imported << " of them were imported.\n"
              "Manage them with `streamgate-relay certificate add|list|delete`; these files may be removed.\n";
    if (!marker)
        log->warn("event=DeviceCasMarkerNotWritten file={}", (dir / moved_marker).string());
    return imported;
}

std::string certificate_thumbprint(const std::filesystem::path& pem)
{
    auto certs = parse_certificates(read_text(pem));
    if (certs.empty())
        throw std::runtime_error("no PEM certificate in " + pem.string());
    return thumbprint_of(certs.front().get());
}

} // namespace sg::relay
