#include <catch2/catch.hpp>

#include "relay/certificates.hpp"

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace sg::relay;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir()
    {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("sg-cert-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
                std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~temp_dir()
    {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

struct command_result {
    int status = -1;
    std::string output;
};

// Paths come from temp_directory_path plus our own digits, so single quotes are enough.
command_result run(const std::string& command)
{
    command_result r;
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    REQUIRE(p != nullptr);
    std::array<char, 4096> buf{};
    std::size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
    int status = ::pclose(p);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

std::string fingerprint(const fs::path& cert)
{
    auto r = run("openssl x509 -noout -fingerprint -sha256 -in " + quote(cert));
    REQUIRE(r.status == 0);
    return r.output;
}

std::string text_of(const fs::path& cert)
{
    auto r = run("openssl x509 -noout -text -in " + quote(cert));
    REQUIRE(r.status == 0);
    return r.output;
}

unsigned mode_of(const fs::path& p)
{
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
}

} // namespace

TEST_CASE("the embedded CA issues a verifiable server certificate", "[certificates]")
{
    temp_dir dir;
    const auto data = dir.path / "data";
    auto files = ensure_relay_certificates(data, {"relay.example.test"});

    CHECK(files.ca_certificate == data / "ca.pem");
    CHECK(files.certificate_chain == data / "server.pem");
    CHECK(files.private_key == data / "server.key");
    REQUIRE(fs::exists(data / "ca.key"));

    auto verify = run("openssl verify -CAfile " + quote(files.ca_certificate) + " " + quote(files.certificate_chain));
    INFO(verify.output);
    CHECK(verify.status == 0);
    CHECK_THAT(verify.output, Catch::Contains("OK"));

    // Purpose check as a TLS client would do it.
    auto purpose = run("openssl verify -purpose sslserver -CAfile " + quote(files.ca_certificate) + " " +
                       quote(files.certificate_chain));
    CHECK(purpose.status == 0);

    const auto text = text_of(files.certificate_chain);
    INFO(text);
    CHECK_THAT(text, Catch::Contains("DNS:localhost"));
    CHECK_THAT(text, Catch::Contains("DNS:relay.example.test"));
    CHECK_THAT(text, Catch::Contains("IP Address:127.0.0.1"));
    CHECK((text.find("IP Address:0:0:0:0:0:0:0:1") != std::string::npos ||
           text.find("IP Address:::1") != std::string::npos));
    CHECK_THAT(text, Catch::Contains("TLS Web Server Authentication"));
    CHECK_THAT(text, Catch::Contains("CA:FALSE"));
    CHECK_THAT(text, Catch::Contains("ecdsa-with-SHA256"));
    CHECK_THAT(text, Catch::Contains("prime256v1"));

    const auto ca_text = text_of(files.ca_certificate);
    CHECK_THAT(ca_text, Catch::Contains("CA:TRUE"));
    CHECK_THAT(ca_text, Catch::Contains("Certificate Sign, CRL Sign"));

    CHECK(mode_of(data) == 0700);
    CHECK(mode_of(files.private_key) == 0600);
    CHECK(mode_of(data / "ca.key") == 0600);
    // No temporaries left behind.
    std::size_t entries = 0;
    for ([[maybe_unused]] auto& e : fs::directory_iterator(data)) ++entries;
    CHECK(entries == 4);
}

TEST_CASE("existing certificates are reused, a new name re-issues by the same CA", "[certificates]")
{
    temp_dir dir;
    const auto data = dir.path / "data";
    auto files = ensure_relay_certificates(data, {"relay.example.test"});
    const auto ca_print = fingerprint(files.ca_certificate);
    const auto server_print = fingerprint(files.certificate_chain);

    SECTION("same names: nothing changes")
    {
        ensure_relay_certificates(data, {"relay.example.test"});
        CHECK(fingerprint(files.ca_certificate) == ca_print);
        CHECK(fingerprint(files.certificate_chain) == server_print);
        // Fewer names than the certificate holds is still fine; names compare case-insensitively.
        ensure_relay_certificates(data, {"RELAY.example.test"});
        ensure_relay_certificates(data, {});
        CHECK(fingerprint(files.certificate_chain) == server_print);
    }
    SECTION("a new name: new server certificate, same CA")
    {
        ensure_relay_certificates(data, {"relay.example.test", "10.1.2.3", "other.example.test"});
        CHECK(fingerprint(files.ca_certificate) == ca_print);
        CHECK(fingerprint(files.certificate_chain) != server_print);
        auto verify = run("openssl verify -CAfile " + quote(files.ca_certificate) + " " +
                          quote(files.certificate_chain));
        CHECK(verify.status == 0);
        const auto text = text_of(files.certificate_chain);
        CHECK_THAT(text, Catch::Contains("IP Address:10.1.2.3"));
        CHECK_THAT(text, Catch::Contains("DNS:other.example.test"));
        CHECK(mode_of(files.private_key) == 0600);
    }
    SECTION("a lost server key re-issues")
    {
        fs::remove(files.private_key);
        ensure_relay_certificates(data, {"relay.example.test"});
        CHECK(fingerprint(files.ca_certificate) == ca_print);
        CHECK(fingerprint(files.certificate_chain) != server_print);
        auto r = run("openssl x509 -noout -pubkey -in " + quote(files.certificate_chain) +
                     " | openssl sha256 && openssl pkey -pubout -in " + quote(files.private_key) + " | openssl sha256");
        REQUIRE(r.status == 0);
        auto nl = r.output.find('\n');
        CHECK(r.output.substr(0, nl) == r.output.substr(nl + 1, r.output.size() - nl - 2));
    }
    SECTION("a lost CA key is an error, not a silent new CA")
    {
        fs::remove(data / "ca.key");
        CHECK_THROWS_AS(ensure_relay_certificates(data, {}), std::runtime_error);
        CHECK(fingerprint(files.ca_certificate) == ca_print);
    }
}

TEST_CASE("loose permissions are tightened", "[certificates]")
{
    temp_dir dir;
    const auto data = dir.path / "data";
    fs::create_directories(data);
    fs::permissions(data, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec);
    auto files = ensure_relay_certificates(data, {});
    CHECK(mode_of(data) == 0700);
    ::chmod(files.private_key.c_str(), 0644);
    ensure_relay_certificates(data, {});
    CHECK(mode_of(files.private_key) == 0600);
}
