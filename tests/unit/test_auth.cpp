#include <catch2/catch.hpp>

#include "common/crypto.hpp"
#include "common/error.hpp"
#include "common/sas_token.hpp"
#include "relay/auth.hpp"
#include "relay/registry.hpp"

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

using namespace sg::relay;
using sg::failure;
using sg::make_sas_token;
namespace codes = sg::codes;
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t fixed_now = 1'800'000'000; // 2027-01-15
constexpr std::int64_t skew = 300;
const std::string host = "127.0.0.1:8443";
const std::string stream_path = "/twins/d/streams/s";

struct auth_temp_dir {
    fs::path path;
    auth_temp_dir()
    {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() / ("sg-auth-test-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter++) + "-" + std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~auth_temp_dir()
    {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    auth_temp_dir(const auth_temp_dir&) = delete;
    auth_temp_dir& operator=(const auth_temp_dir&) = delete;
};

// A real SQLite registry in a temp dir, an authenticator with a controllable clock, and
// helpers to fetch the default policies' keys.
struct fixture {
    auth_temp_dir dir;
    std::unique_ptr<registry> reg;
    std::int64_t now = fixed_now;
    std::unique_ptr<authenticator> auth;

    explicit fixture(std::vector<std::string> host_names = {"127.0.0.1"})
    {
        reg = open_sqlite_registry(dir.path / "registry.db");
        auth = std::make_unique<authenticator>(*reg, std::move(host_names), std::chrono::seconds(skew),
                                               [this] { return now; });
    }

    access_policy policy(const std::string& name)
    {
        auto p = reg->find_policy(name);
        REQUIRE(p);
        return *p;
    }

    device_identity add_device(const std::string& id)
    {
        device_identity d;
        d.device_id = id;
        REQUIRE(reg->create_device(d) == registry_result::ok);
        REQUIRE(!d.primary_key.empty());
        REQUIRE(!d.secondary_key.empty());
        return d;
    }

    // Token signed by policy `name`'s primary key for `scope`, valid for an hour.
    std::string policy_token(const std::string& name, const std::string& scope = host + stream_path)
    {
        return make_sas_token(scope, policy(name).primary_key, name, now + 3600);
    }
};

void require_unauthorized(const failure& f, const std::string& fragment)
{
    INFO("failure: code=" << f.code << " message=" << f.message);
    REQUIRE(static_cast<bool>(f));
    CHECK(f.code == codes::unauthorized);
    CHECK(f.code == 401003);
    CHECK(f.message.find(fragment) != std::string::npos);
}

void require_ok(const failure& f)
{
    INFO("failure: code=" << f.code << " message=" << f.message);
    REQUIRE_FALSE(static_cast<bool>(f));
    CHECK(f.code == codes::none);
    CHECK(f.message.empty());
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Policy tokens
// ---------------------------------------------------------------------------------------------

TEST_CASE("auth: service policy with ServiceConnect is accepted for a stream", "[auth]")
{
    fixture fx;
    require_ok(fx.auth->authorize_policy(fx.policy_token("service"), permission::service_connect, stream_path));
    // iothubowner holds every permission.
    require_ok(fx.auth->authorize_policy(fx.policy_token("iothubowner"), permission::service_connect, stream_path));
    // Without the "SharedAccessSignature " prefix too (the parser accepts both).
    auto tok = fx.policy_token("service");
    require_ok(fx.auth->authorize_policy(tok.substr(std::string("SharedAccessSignature ").size()),
                                         permission::service_connect, stream_path));
}

TEST_CASE("auth: a policy lacking the permission is refused, naming it", "[auth]")
{
    fixture fx;
    auto f = fx.auth->authorize_policy(fx.policy_token("registryRead"), permission::service_connect, stream_path);
    require_unauthorized(f, "lacks the ServiceConnect permission");
    CHECK(f.message.find("registryRead") != std::string::npos);

    // The same token is fine for what the policy does grant.
    require_ok(fx.auth->authorize_policy(fx.policy_token("registryRead", host), permission::registry_read, "/devices"));

    // 'service' cannot write the registry; 'device' cannot connect services.
    require_unauthorized(
        fx.auth->authorize_policy(fx.policy_token("service", host), permission::registry_write, "/devices/x"),
        "lacks the RegistryWrite permission");
    require_unauthorized(fx.auth->authorize_policy(fx.policy_token("device"), permission::service_connect, stream_path),
                         "lacks the ServiceConnect permission");
    // Asking for two permissions needs both.
    require_unauthorized(fx.auth->authorize_policy(fx.policy_token("registryRead", host),
                                                   permission::registry_read | permission::registry_write, "/devices"),
                         "RegistryRead, RegistryWrite");
    require_ok(fx.auth->authorize_policy(fx.policy_token("registryReadWrite", host),
                                         permission::registry_read | permission::registry_write, "/devices"));
}

TEST_CASE("auth: a policy token signed with a wrong key is refused", "[auth]")
{
    fixture fx;
    auto wrong = make_sas_token(host + stream_path, sg::random_key_base64(32), "service", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_policy(wrong, permission::service_connect, stream_path),
                         "signature does not match a key of policy 'service'");

    // Another policy's key with this policy's name.
    auto crossed = make_sas_token(host + stream_path, fx.policy("iothubowner").primary_key, "service", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_policy(crossed, permission::service_connect, stream_path),
                         "signature does not match");

    // A key that is not base64 yields an empty sig, which the parser refuses.
    auto undecodable = make_sas_token(host + stream_path, "not base64!", "service", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_policy(undecodable, permission::service_connect, stream_path),
                         "empty sig");
}

TEST_CASE("auth: a token whose signed fields were altered is refused", "[auth]")
{
    fixture fx;
    auto tok = fx.policy_token("service", host + "/twins/d/streams/s");
    // Move the expiry forward without re-signing.
    auto se = tok.find("&se=");
    REQUIRE(se != std::string::npos);
    auto amp = tok.find('&', se + 1);
    std::string later = tok.substr(0, se) + "&se=" + std::to_string(fx.now + 7200) +
                        (amp == std::string::npos ? "" : tok.substr(amp));
    require_unauthorized(fx.auth->authorize_policy(later, permission::service_connect, stream_path),
                         "signature does not match");

    // Widen the scope without re-signing.
    auto sr_end = tok.find("&sig=");
    REQUIRE(sr_end != std::string::npos);
    std::string widened = "SharedAccessSignature sr=" + sg::url_encode(host, true) + tok.substr(sr_end);
    require_unauthorized(fx.auth->authorize_policy(widened, permission::service_connect, stream_path),
                         "signature does not match");
}

TEST_CASE("auth: the policy's secondary key is accepted", "[auth]")
{
    fixture fx;
    auto p = fx.policy("service");
    REQUIRE(p.primary_key != p.secondary_key);
    auto tok = make_sas_token(host + stream_path, p.secondary_key, "service", fx.now + 3600);
    require_ok(fx.auth->authorize_policy(tok, permission::service_connect, stream_path));
}

TEST_CASE("auth: expiry is checked with the clock skew", "[auth]")
{
    fixture fx;
    auto key = fx.policy("service").primary_key;
    auto at = [&](std::int64_t expiry) { return make_sas_token(host + stream_path, key, "service", expiry); };

    SECTION("expired beyond the skew is refused")
    {
        require_unauthorized(fx.auth->authorize_policy(at(fx.now - skew - 1), permission::service_connect, stream_path),
                             "token expired");
        require_unauthorized(fx.auth->authorize_policy(at(fx.now - 86400), permission::service_connect, stream_path),
                             "token expired");
        require_unauthorized(fx.auth->authorize_policy(at(0), permission::service_connect, stream_path),
                             "token expired");
    }
    SECTION("expired within the skew is accepted")
    {
        require_ok(fx.auth->authorize_policy(at(fx.now - skew), permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(at(fx.now - 1), permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(at(fx.now), permission::service_connect, stream_path));
    }
    SECTION("the injected clock is what counts")
    {
        auto tok = at(fx.now + 60);
        require_ok(fx.auth->authorize_policy(tok, permission::service_connect, stream_path));
        fx.now += 60 + skew;
        require_ok(fx.auth->authorize_policy(tok, permission::service_connect, stream_path));
        fx.now += 1;
        require_unauthorized(fx.auth->authorize_policy(tok, permission::service_connect, stream_path),
                             "token expired");
    }
    SECTION("expiry is checked before the signature: an expired token with a wrong key says expired")
    {
        auto wrong = make_sas_token(host + stream_path, sg::random_key_base64(32), "service", fx.now - skew - 10);
        require_unauthorized(fx.auth->authorize_policy(wrong, permission::service_connect, stream_path),
                             "token expired");
    }
}

TEST_CASE("auth: a zero clock skew is exact", "[auth]")
{
    auth_temp_dir dir;
    auto reg = open_sqlite_registry(dir.path / "registry.db");
    authenticator a(*reg, {"127.0.0.1"}, std::chrono::seconds(0), [] { return fixed_now; });
    auto key = reg->find_policy("service")->primary_key;
    require_ok(a.authorize_policy(make_sas_token(host + stream_path, key, "service", fixed_now),
                                  permission::service_connect, stream_path));
    require_unauthorized(a.authorize_policy(make_sas_token(host + stream_path, key, "service", fixed_now - 1),
                                            permission::service_connect, stream_path),
                         "token expired");
}

TEST_CASE("auth: an unknown policy name is refused", "[auth]")
{
    fixture fx;
    auto tok = make_sas_token(host + stream_path, fx.policy("service").primary_key, "nosuchpolicy", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_policy(tok, permission::service_connect, stream_path),
                         "signature does not match a key of policy 'nosuchpolicy'");
    // Policy names are looked up exactly.
    auto upper = make_sas_token(host + stream_path, fx.policy("service").primary_key, "SERVICE", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_policy(upper, permission::service_connect, stream_path),
                         "policy 'SERVICE'");
}

TEST_CASE("auth: a device-key token cannot authorize a policy operation", "[auth]")
{
    fixture fx;
    auto dev = fx.add_device("d");
    auto tok = make_sas_token(host + "/devices/d", dev.primary_key, "", fx.now + 3600);
    auto f = fx.auth->authorize_policy(tok, permission::service_connect, "/devices/d");
    require_unauthorized(f, "a device key cannot authorize this operation");
    CHECK(f.message.find("ServiceConnect") != std::string::npos);

    // Even a host-wide device token, and even one signed with a policy's key but no skn.
    auto wide = make_sas_token(host, fx.policy("service").primary_key, "", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_policy(wide, permission::service_connect, stream_path),
                         "a device key cannot authorize this operation");
}

// ---------------------------------------------------------------------------------------------
// Scope
// ---------------------------------------------------------------------------------------------

TEST_CASE("auth: the scope names this relay, with or without the port", "[auth]")
{
    SECTION("host names without a port")
    {
        fixture fx({"127.0.0.1"});
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "127.0.0.1:8443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "127.0.0.1/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        // Any port: the port is not part of the identity check.
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "127.0.0.1:443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
    }
    SECTION("host names given with a port")
    {
        fixture fx({"127.0.0.1:8443"});
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "127.0.0.1:8443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "127.0.0.1/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
    }
    SECTION("several host names, case-insensitively")
    {
        fixture fx({"localhost", "Relay.Example.COM:8443", "::1"});
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "relay.example.com:8443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "localhost:8443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "[::1]:8443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        require_unauthorized(fx.auth->authorize_policy(fx.policy_token("service", "127.0.0.1:8443/twins/d/streams/s"),
                                                       permission::service_connect, stream_path),
                             "token scope names another host");
    }
    SECTION("a bracketed IPv6 host name")
    {
        fixture fx({"[::1]:8443"});
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "[::1]:8443/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
        require_ok(fx.auth->authorize_policy(fx.policy_token("service", "[::1]/twins/d/streams/s"),
                                             permission::service_connect, stream_path));
    }
}

TEST_CASE("auth: a token for another host is refused", "[auth]")
{
    fixture fx({"127.0.0.1"});
    for (std::string other : {"evil.example.com:8443", "127.0.0.2:8443", "127.0.0.10", "127.0.0.1.evil.com",
                              "localhost:8443", "myhub.azure-devices.net"}) {
        INFO("token host: " << other);
        require_unauthorized(fx.auth->authorize_policy(fx.policy_token("service", other + stream_path),
                                                       permission::service_connect, stream_path),
                             "token scope names another host");
    }
    // A scope that is only a path (no host) names no host of ours.
    require_unauthorized(fx.auth->authorize_policy(fx.policy_token("service", stream_path), permission::service_connect,
                                                   stream_path),
                         "another host");
}

TEST_CASE("auth: scopes cover whole path segments", "[auth]")
{
    fixture fx;
    auto owner_for = [&](const std::string& scope) { return fx.policy_token("iothubowner", scope); };

    SECTION("host/devices/a covers /devices/a and below, not /devices/ab")
    {
        auto tok = owner_for(host + "/devices/a");
        require_ok(fx.auth->authorize_policy(tok, permission::registry_read, "/devices/a"));
        require_ok(fx.auth->authorize_policy(tok, permission::registry_read, "/devices/a/streams"));
        require_unauthorized(fx.auth->authorize_policy(tok, permission::registry_read, "/devices/ab"),
                             "token scope does not cover /devices/ab");
        require_unauthorized(fx.auth->authorize_policy(tok, permission::registry_read, "/devices"),
                             "token scope does not cover /devices");
        require_unauthorized(fx.auth->authorize_policy(tok, permission::service_connect, "/twins/a/streams/s"),
                             "does not cover");
    }
    SECTION("a trailing slash in the scope changes nothing")
    {
        auto tok = owner_for(host + "/devices/a/");
        require_ok(fx.auth->authorize_policy(tok, permission::registry_read, "/devices/a"));
        require_unauthorized(fx.auth->authorize_policy(tok, permission::registry_read, "/devices/ab"),
                             "does not cover");
    }
    SECTION("a host-only scope covers everything on the host")
    {
        auto tok = owner_for(host);
        require_ok(fx.auth->authorize_policy(tok, permission::registry_read, "/devices"));
        require_ok(fx.auth->authorize_policy(tok, permission::service_connect, "/twins/x/streams/y"));
    }
    SECTION("a stream scope does not cover another stream")
    {
        auto tok = owner_for(host + "/twins/d/streams/s");
        require_ok(fx.auth->authorize_policy(tok, permission::service_connect, "/twins/d/streams/s"));
        require_unauthorized(fx.auth->authorize_policy(tok, permission::service_connect, "/twins/d/streams/s2"),
                             "does not cover");
        require_unauthorized(fx.auth->authorize_policy(tok, permission::service_connect, "/twins/e/streams/s"),
                             "does not cover");
    }
    SECTION("dot segments never widen a scope")
    {
        auto tok = owner_for(host + "/devices/a");
        require_unauthorized(fx.auth->authorize_policy(tok, permission::registry_read, "/devices/a/../b"),
                             "does not cover");
        auto dotted = owner_for(host + "/devices/a/..");
        require_unauthorized(fx.auth->authorize_policy(dotted, permission::registry_read, "/devices/a/../b"),
                             "does not cover");
    }
}

TEST_CASE("auth: malformed tokens are 401003 with a message", "[auth]")
{
    fixture fx;
    auto check = [&](const std::string& authorization, const std::string& fragment) {
        INFO("authorization: " << authorization);
        require_unauthorized(fx.auth->authorize_policy(authorization, permission::service_connect, stream_path),
                             fragment);
        require_unauthorized(fx.auth->authorize_device(authorization, "d", nullptr), fragment);
    };

    auto good = fx.policy_token("service");
    auto sig_begin = good.find("&sig=");
    auto sig_end = good.find("&se=");
    REQUIRE(sig_begin != std::string::npos);
    REQUIRE(sig_end != std::string::npos);
    std::string no_sig = good.substr(0, sig_begin) + good.substr(sig_end);

    check(no_sig, "missing sig");
    check(no_sig, "malformed SharedAccessSignature");
    check("", "missing Authorization header");
    check("Bearer abc.def.ghi", "malformed SharedAccessSignature");
    check("SharedAccessSignature ", "malformed SharedAccessSignature");
    check("SharedAccessSignature sr=127.0.0.1&sig=AAAA&se=1", "sig is not a base64 HMAC-SHA256");
    check("SharedAccessSignature sr=127.0.0.1&se=1&skn=service", "missing sig");
    check(good + "&foo=bar", "unknown field");
    check(good + "&se=1", "duplicate se");
    check(std::string(5000, 'a'), "longer than 4096 bytes");
    {
        // se replaced by garbage: the sig is valid base64 of 32 bytes, so se is what fails.
        auto se = good.find("&se=");
        auto amp = good.find('&', se + 1);
        std::string bad_se = good.substr(0, se) + "&se=12x4" + (amp == std::string::npos ? "" : good.substr(amp));
        check(bad_se, "se is not a decimal number");
    }
    // Messages never echo the signature.
    auto f = fx.auth->authorize_policy(no_sig + "&sig=%ZZ", permission::service_connect, stream_path);
    require_unauthorized(f, "malformed SharedAccessSignature");
}

// ---------------------------------------------------------------------------------------------
// Device control connections
// ---------------------------------------------------------------------------------------------

TEST_CASE("auth: a device's own key token is accepted (primary and secondary)", "[auth]")
{
    fixture fx;
    auto dev = fx.add_device("dev1");
    fx.add_device("dev2");

    for (const auto& key : {dev.primary_key, dev.secondary_key}) {
        auto tok = make_sas_token(host + "/devices/dev1", key, "", fx.now + 3600);
        device_identity out;
        require_ok(fx.auth->authorize_device(tok, "dev1", &out));
        CHECK(out.device_id == "dev1");
        CHECK(out.primary_key == dev.primary_key);
        CHECK(out.generation_id == dev.generation_id);
        CHECK(out.status == device_status::enabled);
    }
    // A null out-pointer is allowed.
    require_ok(fx.auth->authorize_device(make_sas_token(host + "/devices/dev1", dev.primary_key, "", fx.now + 3600),
                                         "dev1", nullptr));
    // A host-wide scope signed by the device key is fine for that device...
    auto wide = make_sas_token(host, dev.primary_key, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(wide, "dev1", nullptr));
    // ...but never for another device.
    require_unauthorized(fx.auth->authorize_device(wide, "dev2", nullptr), "signature does not match the device's keys");
}

TEST_CASE("auth: a device token with the wrong key is refused like an unknown device", "[auth]")
{
    fixture fx;
    fx.add_device("dev1");
    auto wrong = make_sas_token(host + "/devices/dev1", sg::random_key_base64(32), "", fx.now + 3600);
    device_identity out;
    auto f_wrong = fx.auth->authorize_device(wrong, "dev1", &out);
    require_unauthorized(f_wrong, "signature does not match the device's keys");
    CHECK(out.device_id.empty()); // nothing is revealed on failure

    auto unknown = make_sas_token(host + "/devices/ghost", sg::random_key_base64(32), "", fx.now + 3600);
    auto f_unknown = fx.auth->authorize_device(unknown, "ghost", &out);
    require_unauthorized(f_unknown, "signature does not match the device's keys");
    CHECK(out.device_id.empty());

    // Same code and the same message: an unknown id cannot be told apart from a wrong key.
    CHECK(f_unknown.code == f_wrong.code);
    CHECK(f_unknown.message == f_wrong.message);
}

TEST_CASE("auth: a device token scoped to another device is refused", "[auth]")
{
    fixture fx;
    auto a = fx.add_device("a");
    fx.add_device("ab");
    auto tok = make_sas_token(host + "/devices/a", a.primary_key, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(tok, "a", nullptr));
    require_unauthorized(fx.auth->authorize_device(tok, "ab", nullptr), "token scope does not cover /devices/ab");
    // Another relay's host.
    auto elsewhere = make_sas_token("other.example.com/devices/a", a.primary_key, "", fx.now + 3600);
    require_unauthorized(fx.auth->authorize_device(elsewhere, "a", nullptr), "another host");
    // Expired.
    auto old = make_sas_token(host + "/devices/a", a.primary_key, "", fx.now - skew - 1);
    require_unauthorized(fx.auth->authorize_device(old, "a", nullptr), "token expired");
}

TEST_CASE("auth: a disabled device is refused", "[auth]")
{
    fixture fx;
    auto dev = fx.add_device("dev1");
    auto tok = make_sas_token(host + "/devices/dev1", dev.primary_key, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(tok, "dev1", nullptr));

    dev.status = device_status::disabled;
    dev.status_reason = "maintenance";
    REQUIRE(fx.reg->update_device(dev, "*") == registry_result::ok);

    device_identity out;
    require_unauthorized(fx.auth->authorize_device(tok, "dev1", &out), "disabled");
    CHECK(out.device_id.empty());
    // Through a DeviceConnect policy too.
    require_unauthorized(fx.auth->authorize_device(fx.policy_token("device", host + "/devices/dev1"), "dev1", nullptr),
                         "disabled");
    // A wrong key on a disabled device reveals nothing about its status.
    auto wrong = make_sas_token(host + "/devices/dev1", sg::random_key_base64(32), "", fx.now + 3600);
    auto f = fx.auth->authorize_device(wrong, "dev1", nullptr);
    require_unauthorized(f, "signature does not match the device's keys");
    CHECK(f.message.find("disabled") == std::string::npos);

    // Enabled again: accepted again.
    dev.status = device_status::enabled;
    REQUIRE(fx.reg->update_device(dev, "*") == registry_result::ok);
    require_ok(fx.auth->authorize_device(tok, "dev1", nullptr));
}

TEST_CASE("auth: a device that does not use SAS keys is refused with a key token", "[auth]")
{
    fixture fx;
    auto dev = fx.add_device("dev1");
    auto tok = make_sas_token(host + "/devices/dev1", dev.primary_key, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(tok, "dev1", nullptr));

    // Switch to X.509 self-signed; the stored keys may linger but must not count.
    dev.authentication = auth_type::self_signed;
    dev.primary_thumbprint = std::string(64, 'A');
    dev.secondary_thumbprint = std::string(64, 'B');
    REQUIRE(fx.reg->update_device(dev, "*") == registry_result::ok);
    require_unauthorized(fx.auth->authorize_device(tok, "dev1", nullptr), "signature does not match the device's keys");
}

TEST_CASE("auth: the 'device' policy (DeviceConnect) may connect a device", "[auth]")
{
    fixture fx;
    fx.add_device("dev1");

    device_identity out;
    require_ok(fx.auth->authorize_device(fx.policy_token("device", host + "/devices/dev1"), "dev1", &out));
    CHECK(out.device_id == "dev1");
    // Secondary key, and a host-wide scope.
    require_ok(fx.auth->authorize_device(
        make_sas_token(host + "/devices/dev1", fx.policy("device").secondary_key, "device", fx.now + 3600), "dev1",
        nullptr));
    require_ok(fx.auth->authorize_device(fx.policy_token("device", host), "dev1", nullptr));
    // iothubowner includes DeviceConnect.
    require_ok(fx.auth->authorize_device(fx.policy_token("iothubowner", host + "/devices/dev1"), "dev1", nullptr));

    // Scoped to another device.
    require_unauthorized(fx.auth->authorize_device(fx.policy_token("device", host + "/devices/dev2"), "dev1", nullptr),
                         "token scope does not cover /devices/dev1");
    // Wrong key for the policy.
    require_unauthorized(
        fx.auth->authorize_device(
            make_sas_token(host + "/devices/dev1", sg::random_key_base64(32), "device", fx.now + 3600), "dev1", nullptr),
        "signature does not match a key of policy 'device'");
    // An unregistered device, even with a valid policy.
    require_unauthorized(fx.auth->authorize_device(fx.policy_token("device", host + "/devices/ghost"), "ghost", nullptr),
                         "device is not registered");
}

TEST_CASE("auth: policies without DeviceConnect are refused for devices", "[auth]")
{
    fixture fx;
    fx.add_device("dev1");
    for (std::string name : {"service", "registryRead", "registryReadWrite"}) {
        INFO("policy: " << name);
        device_identity out;
        require_unauthorized(fx.auth->authorize_device(fx.policy_token(name, host + "/devices/dev1"), "dev1", &out),
                             "policy '" + name + "' lacks the DeviceConnect permission");
        CHECK(out.device_id.empty());
    }
}

TEST_CASE("auth: after a key renewal the old key's token is refused", "[auth]")
{
    fixture fx;
    auto dev = fx.add_device("dev1");
    const auto old_primary = dev.primary_key;
    auto old_tok = make_sas_token(host + "/devices/dev1", old_primary, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(old_tok, "dev1", nullptr));

    dev.primary_key = sg::random_key_base64(32);
    REQUIRE(dev.primary_key != old_primary);
    REQUIRE(fx.reg->update_device(dev, dev.etag) == registry_result::ok);

    require_unauthorized(fx.auth->authorize_device(old_tok, "dev1", nullptr),
                         "signature does not match the device's keys");
    auto new_tok = make_sas_token(host + "/devices/dev1", dev.primary_key, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(new_tok, "dev1", nullptr));
    // The untouched secondary key still works.
    require_ok(fx.auth->authorize_device(make_sas_token(host + "/devices/dev1", dev.secondary_key, "", fx.now + 3600),
                                         "dev1", nullptr));
}

TEST_CASE("auth: a deleted device's token is refused", "[auth]")
{
    fixture fx;
    auto dev = fx.add_device("dev1");
    auto tok = make_sas_token(host + "/devices/dev1", dev.primary_key, "", fx.now + 3600);
    require_ok(fx.auth->authorize_device(tok, "dev1", nullptr));
    REQUIRE(fx.reg->delete_device("dev1", "*") == registry_result::ok);
    require_unauthorized(fx.auth->authorize_device(tok, "dev1", nullptr), "signature does not match the device's keys");
}

TEST_CASE("auth: device ids with special characters round-trip through the token scope", "[auth]")
{
    fixture fx;
    const std::string id = "My+Device:1@site$";
    auto dev = fx.add_device(id);
    auto tok = make_sas_token(host + "/devices/" + id, dev.primary_key, "", fx.now + 3600);
    device_identity out;
    require_ok(fx.auth->authorize_device(tok, id, &out));
    CHECK(out.device_id == id);
    // The near miss "My+Device:1@site" is not covered by the longer id's scope and has no such device.
    require_unauthorized(fx.auth->authorize_device(tok, "My+Device:1@site", nullptr), "does not cover");
}

TEST_CASE("auth: a CA-authenticated connection stays valid only while its device CA is uploaded", "[auth]")
{
    fixture fx;
    device_identity d;
    d.device_id = "ca-dev";
    d.authentication = auth_type::certificate_authority;
    REQUIRE(fx.reg->create_device(d) == registry_result::ok);
    device_ca ca{"fleet", "(pem)", std::string(64, 'A'), ""};
    REQUIRE(fx.reg->add_device_ca(ca, false) == registry_result::ok);

    peer_certificate cert{std::string(64, 'F'), "ca-dev", true, "fleet", ca.thumbprint};
    std::string credential;
    require_ok(fx.auth->authorize_device("", "ca-dev", nullptr, &cert, &credential));
    CHECK(credential.find("fleet") != std::string::npos);
    auto stored = *fx.reg->find_device("ca-dev");
    CHECK(fx.auth->credential_still_valid(stored, credential));

    // Replaced by another certificate under the same name, or deleted: the connection must go.
    device_ca other{"fleet", "(pem)", std::string(64, 'B'), ""};
    REQUIRE(fx.reg->add_device_ca(other, true) == registry_result::ok);
    CHECK_FALSE(fx.auth->credential_still_valid(stored, credential));
    REQUIRE(fx.reg->add_device_ca(ca, true) == registry_result::ok);
    CHECK(fx.auth->credential_still_valid(stored, credential));
    REQUIRE(fx.reg->delete_device_ca("fleet") == registry_result::ok);
    CHECK_FALSE(fx.auth->credential_still_valid(stored, credential));

    cert.chain_trusted = false;
    require_unauthorized(fx.auth->authorize_device("", "ca-dev", nullptr, &cert, &credential),
                         "does not chain to a device CA");
}
