// The registry REST API (/devices) as a provisioning script written for IoT Hub uses it, driven by
// a plain HTTP client (curl) over real TLS: create, 409 on a second create, update with If-Match,
// 412 on a stale etag, delete, the JSON shapes, list paging with top; and the admin CLI's hint
// about HostName ports that Azure IoT SDK clients cannot use.
#include <catch2/catch.hpp>

#include <regex>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

struct rest_answer {
    int status = 0;
    std::string headers; // lower-cased names, as received
    std::string body;
    std::string header(const std::string& name) const {
        std::regex line("(^|\r\n)" + name + ":[ \t]*([^\r\n]*)", std::regex::icase);
        std::smatch m;
        return std::regex_search(headers, m, line) ? std::string(m[2]) : "";
    }
};

// One request through curl: `curl -sS -X METHOD -H ... -d BODY https://127.0.0.1:PORT/PATH`.
rest_answer curl(relay_fixture& relay, const std::string& method, const std::string& path,
                 const std::string& token, const std::vector<std::string>& headers = {},
                 const std::optional<std::string>& body = std::nullopt) {
    std::vector<std::string> argv = {"curl", "-sS", "--max-time", "10", "--cacert", relay.ca_file().string(),
                                     "-X", method, "-D", "-", "-H", "Authorization: " + token};
    for (const auto& h : headers) {
        argv.push_back("-H");
        argv.push_back(h);
    }
    if (body) {
        argv.insert(argv.end(), {"-H", "Content-Type: application/json", "--data-binary", *body});
    }
    argv.push_back("https://127.0.0.1:" + std::to_string(relay.port()) + path);
    run_result r = run(argv);
    INFO(describe(argv, r));
    REQUIRE(r.exit_code == 0);
    rest_answer a;
    auto end = r.out.find("\r\n\r\n");
    REQUIRE(end != std::string::npos);
    a.headers = r.out.substr(0, end);
    a.body = r.out.substr(end + 4);
    std::smatch m;
    std::regex status_line("^HTTP/1\\.1 ([0-9]{3})");
    REQUIRE(std::regex_search(a.headers, m, status_line));
    a.status = std::stoi(m[1]);
    return a;
}

std::string json_string_field(const std::string& body, const std::string& name) {
    std::smatch m;
    std::regex field("\"" + name + "\":\"([^\"]*)\"");
    return std::regex_search(body, m, field) ? std::string(m[1]) : "";
}

std::string owner_token(relay_fixture& relay) {
    return sas_token(relay_host(relay), policy_key(relay, "registryReadWrite"), "registryReadWrite", unix_now() + 600);
}

} // namespace

TEST_CASE("registry rest: creating a device that exists is 409001, updating needs If-Match",
          "[integration][registry-rest]") {
    relay_fixture relay;
    const std::string token = owner_token(relay);
    const std::string create = R"({"deviceId":"prov-1","status":"enabled"})";

    rest_answer created = curl(relay, "PUT", "/devices/prov-1?api-version=2021-04-12", token, {}, create);
    INFO(created.headers << "\n" << created.body);
    REQUIRE(created.status == 200);
    const std::string etag = json_string_field(created.body, "etag");
    REQUIRE_FALSE(etag.empty());
    CHECK(created.header("etag") == "\"" + etag + "\"");
    const std::string key = json_string_field(created.body, "primaryKey");
    CHECK(key.size() == 44); // 32 random bytes, base64

    SECTION("a second create without If-Match is 409001 and changes nothing") {
        rest_answer again = curl(relay, "PUT", "/devices/prov-1?api-version=2021-04-12", token, {},
                                 R"({"deviceId":"prov-1","status":"disabled"})");
        INFO(again.headers << "\n" << again.body);
        CHECK(again.status == 409);
        CHECK(contains(again.body, "\"errorCode\":409001"));
        CHECK(contains(again.body, "already exists"));
        CHECK(again.header("iothub-errorcode") == "DeviceAlreadyExists");
        rest_answer shown = curl(relay, "GET", "/devices/prov-1", token);
        CHECK(json_string_field(shown.body, "status") == "enabled");
        CHECK(json_string_field(shown.body, "etag") == etag);
        CHECK(json_string_field(shown.body, "primaryKey") == key);
    }
    SECTION("If-Match: \"*\" updates unconditionally") {
        rest_answer updated = curl(relay, "PUT", "/devices/prov-1", token, {"If-Match: \"*\""},
                                   R"({"deviceId":"prov-1","status":"disabled","statusReason":"maintenance"})");
        INFO(updated.body);
        CHECK(updated.status == 200);
        CHECK(json_string_field(updated.body, "status") == "disabled");
        CHECK(json_string_field(updated.body, "statusReason") == "maintenance");
        CHECK(json_string_field(updated.body, "etag") != etag);
    }
    SECTION("the etag, quoted, weak or bare, updates; a stale one is 412001") {
        rest_answer quoted = curl(relay, "PUT", "/devices/prov-1", token, {"If-Match: \"" + etag + "\""},
                                  R"({"deviceId":"prov-1","status":"disabled"})");
        INFO(quoted.body);
        REQUIRE(quoted.status == 200);
        const std::string etag2 = json_string_field(quoted.body, "etag");
        rest_answer weak = curl(relay, "PUT", "/devices/prov-1", token, {"If-Match: W/\"" + etag2 + "\""},
                                R"({"deviceId":"prov-1","status":"enabled"})");
        CHECK(weak.status == 200);
        const std::string etag3 = json_string_field(weak.body, "etag");
        rest_answer bare = curl(relay, "PUT", "/devices/prov-1", token, {"If-Match: " + etag3},
                                R"({"deviceId":"prov-1","status":"enabled"})");
        CHECK(bare.status == 200);
        rest_answer stale = curl(relay, "PUT", "/devices/prov-1", token, {"If-Match: \"" + etag + "\""},
                                 R"({"deviceId":"prov-1","status":"disabled"})");
        INFO(stale.body);
        CHECK(stale.status == 412);
        CHECK(contains(stale.body, "\"errorCode\":412001"));
        CHECK(stale.header("iothub-errorcode") == "PreconditionFailed");
        rest_answer stale_delete = curl(relay, "DELETE", "/devices/prov-1", token, {"If-Match: \"" + etag + "\""});
        CHECK(stale_delete.status == 412);
    }
    SECTION("If-Match on a device that does not exist is 404001, not a create") {
        rest_answer missing = curl(relay, "PUT", "/devices/prov-missing", token, {"If-Match: \"*\""},
                                   R"({"deviceId":"prov-missing"})");
        CHECK(missing.status == 404);
        CHECK(contains(missing.body, "\"errorCode\":404001"));
        CHECK(curl(relay, "GET", "/devices/prov-missing", token).status == 404);
    }
    SECTION("delete is 204, then the device is gone and can be created again") {
        rest_answer deleted = curl(relay, "DELETE", "/devices/prov-1", token, {"If-Match: \"*\""});
        CHECK(deleted.status == 204);
        CHECK(curl(relay, "GET", "/devices/prov-1", token).status == 404);
        CHECK(curl(relay, "DELETE", "/devices/prov-1", token).status == 404);
        rest_answer recreated = curl(relay, "PUT", "/devices/prov-1", token, {}, create);
        CHECK(recreated.status == 200);
        CHECK(json_string_field(recreated.body, "generationId") != json_string_field(created.body, "generationId"));
    }
}

TEST_CASE("registry rest: device JSON has IoT Hub's shapes", "[integration][registry-rest]") {
    relay_fixture relay;
    const std::string token = owner_token(relay);
    rest_answer sas = curl(relay, "PUT", "/devices/shape-sas", token, {}, R"({"deviceId":"shape-sas"})");
    INFO(sas.body);
    REQUIRE(sas.status == 200);
    CHECK(contains(sas.body, R"("connectionState":"Disconnected")"));
    CHECK(contains(sas.body, R"("statusReason":null)"));
    CHECK(contains(sas.body, R"("type":"sas")"));
    CHECK(contains(sas.body, R"("x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null})"));
    CHECK(contains(sas.body, R"("capabilities":{"iotEdge":false})"));
    CHECK(contains(sas.body, R"("cloudToDeviceMessageCount":0)"));

    const std::string thumb(64, 'A');
    rest_answer x509 = curl(relay, "PUT", "/devices/shape-x509", token, {},
                            R"({"deviceId":"shape-x509","authentication":{"type":"selfSigned",)"
                            R"("x509Thumbprint":{"primaryThumbprint":")" + thumb + R"("}}})");
    INFO(x509.body);
    REQUIRE(x509.status == 200);
    CHECK(contains(x509.body, R"("type":"selfSigned")"));
    CHECK(contains(x509.body, R"("symmetricKey":{"primaryKey":null,"secondaryKey":null})"));
    CHECK(contains(x509.body, "\"primaryThumbprint\":\"" + thumb + "\""));
    CHECK(contains(x509.body, R"("secondaryThumbprint":null)"));

    // A live device is Connected in the REST view too.
    echo_server target;
    const std::string cs = admin_ok(relay, {"device-identity", "show-connection-string", "--device-id", "shape-sas"});
    auto proxy = spawn_device_proxy(relay, "device-proxy", cs, target.port());
    REQUIRE(relay.wait_device_connected("shape-sas", *proxy));
    rest_answer live = curl(relay, "GET", "/devices/shape-sas", token);
    CHECK(contains(live.body, R"("connectionState":"Connected")"));
}

TEST_CASE("registry rest: GET /devices takes top (1 to 1000)", "[integration][registry-rest]") {
    relay_fixture relay;
    const std::string token = owner_token(relay);
    for (const char* id : {"list-a", "list-b", "list-c"})
        REQUIRE(curl(relay, "PUT", std::string("/devices/") + id, token, {}, "{}").status == 200);
    rest_answer all = curl(relay, "GET", "/devices?api-version=2021-04-12", token);
    CHECK(all.status == 200);
    CHECK(occurrences(all.body, "\"deviceId\"") == 3);
    rest_answer two = curl(relay, "GET", "/devices?top=2&api-version=2021-04-12", token);
    INFO(two.body);
    CHECK(two.status == 200);
    CHECK(occurrences(two.body, "\"deviceId\"") == 2);
    CHECK(contains(two.body, "\"list-a\""));
    CHECK(contains(two.body, "\"list-b\""));
    for (const char* bad : {"0", "1001", "x", "-1", ""}) {
        INFO("top=" << bad);
        rest_answer refused = curl(relay, "GET", std::string("/devices?top=") + bad, token);
        CHECK(refused.status == 400);
        CHECK(contains(refused.body, "top must be"));
    }
}

TEST_CASE("registry rest: show-connection-string hints at port 443 for Azure IoT SDK clients",
          "[integration][registry-rest]") {
    relay_fixture relay;
    relay.create_device("hint-dev");
    const std::vector<std::string> device_args = {"device-identity", "show-connection-string", "--device-id",
                                                  "hint-dev"};
    run_result r = relay.admin(device_args);
    INFO(describe(device_args, r));
    REQUIRE(r.exit_code == 0);
    CHECK(contains(r.out, "HostName=127.0.0.1:" + std::to_string(relay.port())));
    CHECK(contains(r.err, "hint: HostName 127.0.0.1:" + std::to_string(relay.port())));
    CHECK(contains(r.err, "--listen 0.0.0.0:443"));
    CHECK(occurrences(r.out, "\n") == 1); // stdout is the connection string alone
    run_result policy = relay.admin({"show-connection-string", "--policy-name", "service"});
    CHECK(contains(policy.err, "hint: HostName"));

    // Behind a port-443 forwarder: --host-name NAME:443 gives HostName=NAME, and no hint.
    const std::vector<std::string> forwarded = {"--host-name", "relay.example.com:443", "device-identity",
                                                "show-connection-string", "--device-id", "hint-dev"};
    run_result f = relay.admin(forwarded);
    INFO(describe(forwarded, f));
    REQUIRE(f.exit_code == 0);
    CHECK(contains(f.out, "HostName=relay.example.com;"));
    CHECK_FALSE(contains(f.err, "hint:"));
}
