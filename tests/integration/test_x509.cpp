// X.509 device authentication over mutual TLS (issue 3): devices registered with SHA-256
// thumbprints, and CA-authenticated devices (chain to an uploaded CA, CN = device id).
// Certificates are made with the openssl CLI at test time.
#include <catch2/catch.hpp>

#include <regex>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

std::unique_ptr<process> spawn_x509_proxy(relay_fixture& relay, const std::string& name, const std::string& device_cs,
                                          const cert_files& cert, int target_port,
                                          const std::vector<std::string>& extra = {}) {
    std::vector<std::string> options = {"--cert", cert.cert.string(), "--key", cert.key.string()};
    options.insert(options.end(), extra.begin(), extra.end());
    return spawn_device_proxy(relay, name, device_cs, target_port, options);
}

// Starts a device proxy with `cert` and expects the relay to refuse it (401003), the device never
// showing up as Connected.
void expect_refused(relay_fixture& relay, const std::string& device_id, const std::string& device_cs,
                    const cert_files& cert, const std::string& why) {
    INFO("expected a refusal: " << why);
    auto proxy = spawn_x509_proxy(relay, "device-proxy-refused", device_cs, cert, free_port(), {"--exit-on-auth-failure"});
    auto code = proxy->wait_exit(k_fail_timeout);
    INFO(proxy->describe());
    CHECK(code == 3);
    CHECK(contains(proxy->stderr_text(), "401003"));
    CHECK_FALSE(relay.device_connected(device_id));
}

// A stream through a device proxy: a --stdio service proxy carries random bytes to the echo server
// behind the device and back.
void expect_stream_works(relay_fixture& relay, const std::string& device_id) {
    auto [mine, theirs] = socket_pair();
    auto svc = spawn_stdio_service_proxy(relay, relay.service_connection_string(), device_id, theirs.get());
    theirs.reset();
    const bytes data = random_bytes(256 * 1024);
    transfer_result r = transfer(mine.get(), data, {.receive_exactly = data.size(), .timeout = k_transfer_timeout});
    INFO(svc->describe());
    INFO(r.error);
    CHECK(r.ok());
    CHECK(r.received_sha256 == sha256_hex(data));
}

std::string thumbprint(relay_fixture& relay, const cert_files& c) {
    std::string t = admin_ok(relay, {"certificate", "thumbprint", "--path", c.cert.string()});
    CHECK(std::regex_match(t, std::regex("[0-9A-F]{64}")));
    return t;
}

}  // namespace

TEST_CASE("x509: a device registered with thumbprints connects with its certificate only",
          "[integration][x509]") {
    relay_fixture relay;
    echo_server target;
    const cert_files primary = make_self_signed(relay.dir().path(), "dev-x509-primary", "dev-x509");
    const cert_files secondary = make_self_signed(relay.dir().path(), "dev-x509-secondary", "dev-x509");
    const cert_files stranger = make_self_signed(relay.dir().path(), "stranger", "dev-x509");  // same CN, other key

    const std::string cs = admin_ok(relay, {"device-identity", "create", "--device-id", "dev-x509", "--auth-method",
                                            "x509_thumbprint", "--primary-thumbprint", thumbprint(relay, primary),
                                            "--secondary-thumbprint", thumbprint(relay, secondary)});
    CHECK(contains(cs, "DeviceId=dev-x509"));
    CHECK(contains(to_lower_ascii(cs), "x509=true"));
    CHECK_FALSE(contains(cs, "SharedAccessKey"));

    expect_refused(relay, "dev-x509", cs, stranger, "a self-signed certificate with another thumbprint");

    for (const cert_files* c : {&secondary, &primary}) {
        INFO("certificate " << c->cert.filename().string());
        auto proxy = spawn_x509_proxy(relay, "device-proxy-x509", cs, *c, target.port());
        bool connected = relay.wait_device_connected("dev-x509", *proxy);
        INFO(proxy->describe());
        REQUIRE(connected);
        CHECK(contains(relay.relay().stderr_text(), "event=DeviceConnected device=dev-x509"));
        expect_stream_works(relay, "dev-x509");
        proxy.reset();
        CHECK(wait_until([&] { return device_state(relay, "dev-x509") == "Disconnected"; }, 10s, 100ms));
    }

    // A SAS device cannot be impersonated with a certificate, and a certificate device has no key to
    // steal: its SAS-style connection string (made up) is refused.
    relay.create_device("sas-device");
    const cert_files sas_cert = make_self_signed(relay.dir().path(), "sas-device", "sas-device");
    expect_refused(relay, "sas-device",
                   "HostName=" + relay_host(relay) + ";DeviceId=sas-device;x509=true", sas_cert,
                   "a certificate for a device registered with SAS keys");
}

TEST_CASE("x509: a CA-authenticated device needs a chain to an uploaded CA and CN = device id",
          "[integration][x509]") {
    relay_fixture relay;
    echo_server target;
    const auto& dir = relay.dir().path();
    const cert_files ca = make_self_signed(dir, "test-ca", "Streamgate Test CA", true);
    const cert_files unknown_ca = make_self_signed(dir, "unknown-ca", "Streamgate Test CA", true);  // same name!
    const cert_files good = make_issued(dir, "dev-ca", "dev-ca", ca);
    const cert_files wrong_cn = make_issued(dir, "dev-ca-other", "other", ca);
    const cert_files from_unknown = make_issued(dir, "dev-ca-unknown", "dev-ca", unknown_ca);
    const cert_files self_signed = make_self_signed(dir, "dev-ca-self", "dev-ca");

    // Only CA certificates are accepted as device CAs.
    {
        const std::vector<std::string> args = {"certificate", "add", "--name", "leaf", "--path", good.cert.string()};
        run_result r = relay.admin(args);
        INFO(describe(args, r));
        CHECK(r.exit_code != 0);
    }
    admin_ok(relay, {"certificate", "add", "--name", "test-ca", "--path", ca.cert.string()});
    CHECK(contains(admin_ok(relay, {"certificate", "list"}), "test-ca"));
    CHECK_FALSE(contains(admin_ok(relay, {"certificate", "list"}), "leaf"));

    const std::string cs =
        admin_ok(relay, {"device-identity", "create", "--device-id", "dev-ca", "--auth-method", "x509_ca"});
    CHECK(contains(to_lower_ascii(cs), "x509=true"));

    expect_refused(relay, "dev-ca", cs, wrong_cn, "issued by the CA, but CN=other");
    expect_refused(relay, "dev-ca", cs, from_unknown, "CN=dev-ca from a CA that was never uploaded");
    expect_refused(relay, "dev-ca", cs, self_signed, "a self-signed CN=dev-ca");
    // The CA's own certificate (and key) is not a device certificate for dev-ca either.
    expect_refused(relay, "dev-ca", cs, ca, "the CA certificate itself");

    {
        auto proxy = spawn_x509_proxy(relay, "device-proxy-ca", cs, good, target.port());
        bool connected = relay.wait_device_connected("dev-ca", *proxy);
        INFO(proxy->describe());
        REQUIRE(connected);
        expect_stream_works(relay, "dev-ca");
    }

    // Once the CA is deleted, its certificates open no new connections.
    admin_ok(relay, {"certificate", "delete", "--name", "test-ca"});
    CHECK_FALSE(contains(admin_ok(relay, {"certificate", "list"}), "test-ca"));
    CHECK(wait_until([&] { return device_state(relay, "dev-ca") == "Disconnected"; }, 10s, 100ms));
    expect_refused(relay, "dev-ca", cs, good, "the CA was deleted");
}
