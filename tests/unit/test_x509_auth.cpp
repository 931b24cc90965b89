// Device CAs: what `certificate add` accepts, and the one-time import of <data-dir>/device-cas/
// into the registry on upgrade. Certificates come from the embedded CA (ca.pem is a CA,
// server.pem is not).
#include <catch2/catch.hpp>

#include "relay/certificates.hpp"
#include "relay/data_dir.hpp"
#include "relay/x509_auth.hpp"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <unistd.h>

using namespace sg::relay;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir()
    {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() / ("sg-x509-test-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter++) + "-" + std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~temp_dir()
    {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string slurp(const fs::path& file)
{
    std::ifstream in(file, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string error_of(const std::function<void()>& f)
{
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

} // namespace

TEST_CASE("x509: a device CA must be a named PEM CA certificate, only certificates are kept", "[x509]")
{
    temp_dir dir;
    auto files = ensure_relay_certificates(dir.path / "pki", {});
    auto ca = read_device_ca_file("fleet-ca", files.ca_certificate);
    CHECK(ca.name == "fleet-ca");
    CHECK(ca.thumbprint == certificate_thumbprint(files.ca_certificate));
    CHECK(ca.pem.find("BEGIN CERTIFICATE") != std::string::npos);

    // A key beside the certificate in the same file never reaches the registry.
    const auto bundle = dir.path / "bundle.pem";
    std::ofstream(bundle) << slurp(files.ca_certificate) << slurp(dir.path / "pki" / "ca.key");
    auto from_bundle = read_device_ca_file("bundle", bundle);
    CHECK(from_bundle.pem == ca.pem);
    CHECK(from_bundle.pem.find("PRIVATE KEY") == std::string::npos);

    CHECK(error_of([&] { read_device_ca_file("server", files.certificate_chain); }).find("not a CA") !=
          std::string::npos);
    CHECK(error_of([&] { make_device_ca("empty", "not a certificate", "the upload"); }) ==
          "no PEM certificate in the upload");
    for (const char* bad : {"", "..", "a/b", "sp ace", "x.pem\n"})
        CHECK(error_of([&] { read_device_ca_file(bad, files.ca_certificate); }).find("certificate name") !=
              std::string::npos);
    CHECK(error_of([&] { read_device_ca_file(std::string(65, 'a'), files.ca_certificate); }) != "");
    CHECK(error_of([&] { read_device_ca_file("missing", dir.path / "nope.pem"); }).find("cannot read") !=
          std::string::npos);
}

TEST_CASE("x509: device-cas/*.pem of an upgraded data directory are imported into the registry once", "[x509]")
{
    temp_dir dir;
    auto files = ensure_relay_certificates(dir.path / "pki", {});
    const auto data = dir.path / "data";
    const auto cas = device_ca_dir(data);
    fs::create_directories(cas);
    fs::copy_file(files.ca_certificate, cas / "old-ca.pem");
    fs::copy_file(files.certificate_chain, cas / "not-a-ca.pem"); // skipped, with a warning
    std::ofstream(cas / "notes.txt") << "not a .pem";

    {
        auto reg = open_registry(data);
        auto all = reg->list_device_cas();
        REQUIRE(all.size() == 1);
        CHECK(all[0].name == "old-ca");
        CHECK(all[0].thumbprint == certificate_thumbprint(files.ca_certificate));
        auto audit = reg->audit_after(0, 10);
        REQUIRE(audit.size() == 1);
        CHECK(audit[0].action == "certificate-add");
        CHECK(audit[0].subject == "old-ca");
        CHECK(fs::exists(cas / "MOVED-TO-REGISTRY.txt"));
        CHECK(fs::exists(cas / "old-ca.pem")); // left in place, no longer read
        // Deleted from the registry: the file does not bring it back.
        CHECK(reg->delete_device_ca("old-ca") == registry_result::ok);
    }
    CHECK(open_registry(data)->list_device_cas().empty());

    // Another data directory whose registry already holds CAs imports nothing (and says so).
    const auto second = dir.path / "second";
    fs::create_directories(device_ca_dir(second));
    fs::copy_file(files.ca_certificate, device_ca_dir(second) / "other.pem");
    {
        auto reg = open_sqlite_registry(second / "registry.db");
        auto kept = read_device_ca_file("kept", files.ca_certificate);
        REQUIRE(reg->add_device_ca(kept, false) == registry_result::ok);
    }
    auto reg = open_registry(second);
    REQUIRE(reg->list_device_cas().size() == 1);
    CHECK(reg->list_device_cas()[0].name == "kept");
    CHECK(fs::exists(device_ca_dir(second) / "MOVED-TO-REGISTRY.txt"));
}
