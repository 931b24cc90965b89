// Audit (issue 3): keys, signatures and stream tokens never appear in any log line. A
// representative scenario runs with every process at its most verbose (devices, streams, wrong
// keys, renewals, REST registry writes, raw stream joins), and every log it produced is searched
// for every secret it used.
#include <catch2/catch.hpp>

#include <filesystem>
#include <regex>
#include <set>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

// Secrets and the forms they could be logged in.
class secret_list {
public:
    void add(const std::string& what, const std::string& value) {
        if (value.size() < 16) {
            FAIL_CHECK("secret '" << what << "' is too short to search for: '" << value << "'");
            return;
        }
        for (const std::string& form : {value, url_encode_lower(value), upper_escapes(url_encode_lower(value))}) {
            if (seen_.insert(form).second) forms_.emplace_back(what, form);
        }
    }
    // A SAS token's signature, as made by make_sas().
    void add_token(const std::string& what, const sas_token_parts& t) { add(what + " (sig)", t.sig); }
    // Both keys of a device, as `device-identity show` tells them.
    void add_device_keys(relay_fixture& relay, const std::string& id, const std::string& when) {
        const std::string json = admin_ok(relay, {"device-identity", "show", "--device-id", id});
        for (const std::string key : {"primaryKey", "secondaryKey"}) {
            std::smatch m;
            REQUIRE(std::regex_search(json, m, std::regex("\"" + key + "\"\\s*:\\s*\"([^\"]+)\"")));
            add(id + " " + key + " " + when, m[1]);
        }
    }
    const std::vector<std::pair<std::string, std::string>>& forms() const { return forms_; }
    std::size_t size() const { return forms_.size(); }

private:
    static std::string upper_escapes(std::string s) {
        for (std::size_t i = 0; i + 2 < s.size(); ++i)
            if (s[i] == '%') {
                s[i + 1] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[i + 1])));
                s[i + 2] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[i + 2])));
            }
        return s;
    }
    std::vector<std::pair<std::string, std::string>> forms_;
    std::set<std::string> seen_;
};

std::string auth(const std::string& token) { return "Authorization: " + token; }

void stream_through(relay_fixture& relay, const std::string& service_cs, const std::string& device_id) {
    auto [mine, theirs] = socket_pair();
    auto svc = spawn_stdio_service_proxy(relay, service_cs, device_id, theirs.get(), {"--verbose"});
    theirs.reset();
    const bytes data = random_bytes(64 * 1024);
    transfer_result r = transfer(mine.get(), data, {.receive_exactly = data.size(), .timeout = k_transfer_timeout});
    INFO(svc->describe() << ": " << r.error);
    CHECK(r.ok());
    CHECK(r.received_sha256 == sha256_hex(data));
}

}  // namespace

TEST_CASE("secrets: no key, signature or stream token appears in any log line", "[integration][secrets]") {
    relay_fixture relay(relay_config{.args = {"--verbose"}});
    echo_server target;
    secret_list secrets;
    const std::string host = relay_host(relay);
    const long long se = unix_now() + 600;

    for (const std::string policy : {"iothubowner", "service", "device", "registryRead", "registryReadWrite"})
        for (const std::string type : {"primary", "secondary"})
            secrets.add("policy " + policy + " " + type, policy_key(relay, policy, type));
    const std::string service_cs = relay.service_connection_string();

    // Devices, their keys before any renewal.
    relay.create_device("sec-a");
    relay.create_device("sec-b");
    const std::string py_cs = relay.create_device("sec-py");
    for (const std::string id : {"sec-a", "sec-b", "sec-py"}) secrets.add_device_keys(relay, id, "(original)");

    // A device proxy on the primary key, one on the secondary; streams through both.
    auto proxy_a = spawn_device_proxy(relay, "device-proxy-a", device_connection_string(relay, "sec-a"), target.port(),
                                      {"--verbose"});
    auto proxy_b = spawn_device_proxy(relay, "device-proxy-b", device_connection_string(relay, "sec-b", "secondary"),
                                      target.port(), {"--verbose"});
    REQUIRE(relay.wait_device_connected("sec-a", *proxy_a));
    REQUIRE(relay.wait_device_connected("sec-b", *proxy_b));
    stream_through(relay, service_cs, "sec-a");
    stream_through(relay, service_cs, "sec-b");

    // Wrong keys, device and service side.
    {
        const std::string wrong_device = with_wrong_key(device_connection_string(relay, "sec-a"));
        secrets.add("wrong device key", cs_field(wrong_device, "SharedAccessKey"));
        auto wrong = spawn_device_proxy(relay, "device-proxy-wrong", wrong_device, target.port(),
                                        {"--verbose", "--exit-on-auth-failure"});
        CHECK(wrong->wait_exit(k_fail_timeout) == 3);
        const std::string wrong_service = with_wrong_key(service_cs);
        secrets.add("wrong service key", cs_field(wrong_service, "SharedAccessKey"));
        auto [mine, theirs] = socket_pair();
        auto svc = spawn_stdio_service_proxy(relay, wrong_service, "sec-a", theirs.get(), {"--verbose"});
        theirs.reset();
        CHECK(svc->wait_exit(k_fail_timeout).value_or(0) != 0);
        CHECK(contains(svc->stderr_text(), "401003"));
    }

    // Renewals: the live connections are cut off; new proxies use the new keys.
    admin_ok(relay, {"device-identity", "update", "--device-id", "sec-a", "--renew-key", "primary"});
    admin_ok(relay, {"device-identity", "update", "--device-id", "sec-b", "--renew-key", "secondary"});
    CHECK(wait_until([&] { return contains(proxy_a->stderr_text(), "401003"); }, 5s));
    CHECK(wait_until([&] { return contains(proxy_b->stderr_text(), "401003"); }, 5s));
    proxy_a.reset();
    proxy_b.reset();
    for (const std::string id : {"sec-a", "sec-b"}) secrets.add_device_keys(relay, id, "(renewed)");
    auto proxy_a2 = spawn_device_proxy(relay, "device-proxy-a2", device_connection_string(relay, "sec-a"), target.port(),
                                       {"--verbose"});
    REQUIRE(relay.wait_device_connected("sec-a", *proxy_a2));
    stream_through(relay, service_cs, "sec-a");

    // Raw clients: SAS tokens made here, a REST registry write carrying keys, and stream tokens of
    // both sides (wire_client.py is the device "sec-py" and the service).
    const sas_token_parts service_sas = make_sas(host, policy_key(relay, "service"), "service", se);
    const sas_token_parts owner_sas = make_sas(host, policy_key(relay, "iothubowner"), "iothubowner", se);
    const sas_token_parts py_sas = make_sas(host + "/devices/sec-py", cs_field(py_cs, "SharedAccessKey"), "", se);
    const sas_token_parts bad_sas = make_sas(host, base64_encode(random_bytes(32)), "service", se);
    secrets.add_token("service SAS token", service_sas);
    secrets.add_token("iothubowner SAS token", owner_sas);
    secrets.add_token("device SAS token", py_sas);
    secrets.add_token("wrong SAS token", bad_sas);
    const std::string rest_primary = base64_encode(random_bytes(32));
    const std::string rest_secondary = base64_encode(random_bytes(32));
    secrets.add("REST-created primary key", rest_primary);
    secrets.add("REST-created secondary key", rest_secondary);
    const std::string rest_body = R"({"deviceId":"sec-rest","authentication":{"type":"sas","symmetricKey":{"primaryKey":")" +
                                  rest_primary + R"(","secondaryKey":")" + rest_secondary + R"("}}})";
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "svc"}}),
        step({{"op", "request"}, {"label", "rest-create"}, {"conn", "svc"}, {"method", "PUT"}, {"path", "/devices/sec-rest"},
              {"headers", std::vector<std::string>{auth(owner_sas.header), "Content-Type: application/json"}},
              {"body", rest_body}}),
        step({{"op", "request"}, {"label", "bad-post"}, {"conn", "svc"}, {"method", "POST"}, {"path", "/twins/sec-a/streams/x"},
              {"headers", std::vector<std::string>{auth(bad_sas.header)}}}),
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/sec-py/streams"},
              {"headers", std::vector<std::string>{auth(py_sas.header)}}}),
        wait_connected_step(relay, "sec-py"),
        step({{"op", "request"}, {"label", "post-py"}, {"conn", "svc"}, {"method", "POST"}, {"path", "/twins/sec-py/streams/s"},
              {"headers", std::vector<std::string>{auth(service_sas.header)}}, {"read", false}}),
        step({{"op", "ws_recv"}, {"label", "request"}, {"conn", "dev"}}),
        step({{"op", "ws_send"}, {"conn", "dev"}, {"type", "text"},
              {"data", R"({"type":"streamResponse","requestId":"${request.j.requestId}","accepted":true})"}}),
        step({{"op", "read_response"}, {"label", "post-py"}, {"conn", "svc"}}),
        step({{"op", "connect"}, {"conn", "s-side"}}),
        step({{"op", "upgrade"}, {"label", "join-service"}, {"conn", "s-side"}, {"path", "${post-py.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post-py.h.iothub-streaming-auth-token}"}}}),
        step({{"op", "connect"}, {"conn", "d-side"}}),
        step({{"op", "upgrade"}, {"label", "join-device"}, {"conn", "d-side"}, {"path", "${request.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${request.j.authorizationToken}"}}}),
        step({{"op", "ws_send"}, {"conn", "s-side"}, {"type", "binary"}, {"data", "secret-free data"}}),
        step({{"op", "ws_recv"}, {"label", "carried"}, {"conn", "d-side"}}),
        // A replayed token is refused (and logged: the refusal must not log the token).
        step({{"op", "connect"}, {"conn", "replay"}}),
        step({{"op", "upgrade"}, {"label", "replay"}, {"conn", "replay"}, {"path", "${post-py.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post-py.h.iothub-streaming-auth-token}"}}}),
        // A stream to the device proxy: its device-side token travels on its control connection.
        step({{"op", "request"}, {"label", "post-a"}, {"conn", "svc"}, {"method", "POST"}, {"path", "/twins/sec-a/streams/s"},
              {"headers", std::vector<std::string>{auth(service_sas.header)}}, {"timeout", 20}}),
        step({{"op", "connect"}, {"conn", "a-side"}}),
        step({{"op", "upgrade"}, {"label", "join-a"}, {"conn", "a-side"}, {"path", "${post-a.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post-a.h.iothub-streaming-auth-token}"}}}),
        step({{"op", "ws_send"}, {"conn", "a-side"}, {"type", "binary"}, {"data", "echo me"}}),
        step({{"op", "ws_recv"}, {"label", "echoed"}, {"conn", "a-side"}, {"timeout", 20}}),
    }, 60s);
    INFO(w.describe());
    CHECK(w.at("rest-create").status() == 200);
    CHECK(w.at("bad-post").error_code() == 401003);
    CHECK(w.at("control").status() == 101);
    CHECK(w.at("join-service").status() == 101);
    CHECK(w.at("join-device").status() == 101);
    CHECK(w.at("carried").get("data_hex") == to_hex_string("secret-free data"));
    CHECK(w.at("replay").error_code() == 401003);
    CHECK(w.at("join-a").status() == 101);
    CHECK(w.at("echoed").get("data_hex") == to_hex_string("echo me"));
    secrets.add("service-side stream token (sec-py)", w.at("post-py").get("h.iothub-streaming-auth-token"));
    secrets.add("device-side stream token (sec-py)", w.at("request").get("j.authorizationToken"));
    secrets.add("service-side stream token (sec-a)", w.at("post-a").get("h.iothub-streaming-auth-token"));
    CHECK(w.at("rest-create").get("j.deviceId") == "sec-rest");

    // Renew everything once more (the relay revokes, and logs that it did).
    admin_ok(relay, {"device-identity", "update", "--device-id", "sec-py", "--renew-key", "both"});
    admin_ok(relay, {"device-identity", "update", "--device-id", "sec-a", "--renew-key", "both"});
    secrets.add_device_keys(relay, "sec-py", "(renewed)");
    secrets.add_device_keys(relay, "sec-a", "(renewed twice)");
    CHECK(wait_until([&] { return occurrences(relay.relay().stderr_text(), "event=DeviceRevoked device=sec-a") >= 2; }, 5s));
    CHECK(wait_until([&] { return contains(proxy_a2->stderr_text(), "401003"); }, 5s));
    proxy_a2.reset();

    // The scenario did produce the logs we mean to search.
    const std::string relay_log = relay.relay().stderr_text();
    for (const std::string event : {"event=DeviceConnected", "event=StreamEstablished", "event=AuthFailed",
                                    "event=DeviceRevoked", "event=RegistryChange", "event=StreamClosed"}) {
        INFO(event);
        CHECK(contains(relay_log, event));
    }

    std::vector<std::string> violations;
    std::size_t files = 0, total_bytes = 0;
    // Generic shapes of a credential, whatever its value.
    const std::vector<std::pair<std::string, std::regex>> shapes = {
        {"a SAS signature field", std::regex("sig=[A-Za-z0-9%+/]")},
        {"a SharedAccessKey field", std::regex("SharedAccessKey=[A-Za-z0-9%+/]", std::regex::icase)},
        {"a Bearer token", std::regex("Bearer +[A-Za-z0-9_-]{16,}")},
        {"a primaryKey/secondaryKey value", std::regex("(primary|secondary)Key\"?\\s*[:=]\\s*\"?[A-Za-z0-9+/]{16,}")},
        {"an authorizationToken value", std::regex("authorizationToken\"?\\s*[:=]\\s*\"?[A-Za-z0-9_-]{16,}")},
    };
    for (const auto& entry : std::filesystem::directory_iterator(relay.dir().path())) {
        if (!entry.is_regular_file()) continue;
        const std::string name = entry.path().filename().string();
        if (!name.ends_with(".stderr") && !name.ends_with(".stdout")) continue;
        const std::string text = read_file(entry.path());
        ++files;
        total_bytes += text.size();
        for (const auto& [what, form] : secrets.forms())
            if (contains(text, form)) violations.push_back(name + " contains " + what);
        for (const auto& [what, re] : shapes) {
            std::smatch m;
            if (std::regex_search(text, m, re)) violations.push_back(name + " contains " + what + ": ..." + m.str(0) + "...");
        }
    }
    INFO(files << " log files, " << total_bytes << " bytes, " << secrets.size() << " secret forms searched");
    CHECK(files >= 10);
    CHECK(secrets.size() >= 40);
    std::string list;
    for (const auto& v : violations) list += "\n  " + v;
    INFO("secrets found in logs:" << list);
    CHECK(violations.empty());
}
