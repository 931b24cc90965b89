// Identity and permissions (issue 3): SAS token expiry and scope, the permission each operation
// needs, device keys (primary, secondary, renewal, disabling), single-use stream tokens, TLS.
//
// The adversarial requests are made by wire_client.py (see wire.hpp); the product's own proxies
// are used where a real device or service is the point.
#include <catch2/catch.hpp>

#include <regex>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

std::string auth(const std::string& token) { return "Authorization: " + token; }

// POST /twins/{device}/streams/{name} with `token` on connection "c" (label = `label`).
std::string post_stream(const std::string& label, const std::string& device, const std::string& token,
                        const std::vector<std::string>& extra_headers = {}, bool read = true) {
    std::vector<std::string> headers = {auth(token)};
    headers.insert(headers.end(), extra_headers.begin(), extra_headers.end());
    return step({{"op", "request"}, {"label", label.c_str()}, {"conn", "c"}, {"method", "POST"},
                 {"path", "/twins/" + device + "/streams/" + "probe"}, {"headers", headers}, {"read", read}});
}

// A WebSocket upgrade on a fresh connection `conn`.
std::vector<std::string> upgrade(const std::string& label, const std::string& conn, const std::string& path,
                                 const std::vector<std::string>& headers) {
    return {step({{"op", "connect"}, {"label", (label + "-connect").c_str()}, {"conn", conn}}),
            step({{"op", "upgrade"}, {"label", label.c_str()}, {"conn", conn}, {"path", path}, {"headers", headers}})};
}

void append(std::vector<std::string>& to, const std::vector<std::string>& more) {
    to.insert(to.end(), more.begin(), more.end());
}

// The response event `label` is an HTTP error with `code` in its JSON body.
void check_error(const wire_result& w, const std::string& label, long long code, const std::string& message_part = "") {
    const wire_event& e = w.at(label);
    INFO("step " << label << ": " << e.line);
    INFO(w.describe());
    CHECK(e.event() == "response");
    CHECK(e.status() == code / 1000);
    CHECK(e.error_code() == code);
    if (!message_part.empty()) CHECK(contains(e.get("j.message"), message_part));
}

void check_status(const wire_result& w, const std::string& label, int status) {
    const wire_event& e = w.at(label);
    INFO("step " << label << ": " << e.line);
    INFO(w.describe());
    CHECK(e.event() == "response");
    CHECK(e.status() == status);
}

bool wait_state(relay_fixture& relay, const std::string& id, const std::string& state, millis timeout) {
    return wait_until([&] { return device_state(relay, id) == state; }, timeout, 100ms);
}

}  // namespace

TEST_CASE("security: SAS expiry is enforced, with the configured clock-skew allowance",
          "[integration][security]") {
    relay_fixture relay(relay_config{.args = {"--clock-skew", "60"}});
    const std::string host = relay_host(relay);
    const std::string key = policy_key(relay, "service");
    const long long now = unix_now();
    // "no-such-device" is answered 404001 only after authorization succeeded.
    wire_result w = wire_script(
        relay, {step({{"op", "connect"}, {"conn", "c"}}),
                post_stream("valid", "no-such-device", sas_token(host, key, "service", now + 600)),
                post_stream("expired", "no-such-device", sas_token(host, key, "service", now - 120)),
                post_stream("within-skew", "no-such-device", sas_token(host, key, "service", now - 30)),
                post_stream("long-expired", "no-such-device", sas_token(host, key, "service", now - 86400))});
    check_error(w, "valid", 404001);
    check_error(w, "expired", 401003, "expired");
    check_error(w, "within-skew", 404001);
    check_error(w, "long-expired", 401003, "expired");
}

TEST_CASE("security: the default clock skew is five minutes", "[integration][security]") {
    relay_fixture relay;
    const std::string host = relay_host(relay);
    const std::string key = policy_key(relay, "service");
    const long long now = unix_now();
    wire_result w = wire_script(
        relay, {step({{"op", "connect"}, {"conn", "c"}}),
                post_stream("four-minutes-ago", "no-such-device", sas_token(host, key, "service", now - 240)),
                post_stream("six-minutes-ago", "no-such-device", sas_token(host, key, "service", now - 360))});
    check_error(w, "four-minutes-ago", 404001);
    check_error(w, "six-minutes-ago", 401003, "expired");
}

TEST_CASE("security: sr must name this relay and cover the resource by whole segments",
          "[integration][security]") {
    relay_fixture relay;
    const std::string host = relay_host(relay);
    const std::string port = std::to_string(relay.port());
    const std::string service_key = policy_key(relay, "service");
    const std::string device_policy_key = policy_key(relay, "device");
    relay.create_device("a");
    relay.create_device("ab");
    relay.create_device("dev1");
    relay.create_device("dev10");
    const long long se = unix_now() + 600;

    std::vector<std::string> steps = {
        step({{"op", "connect"}, {"conn", "c"}}),
        // Another host, with and without a port.
        post_stream("other-host", "dev1", sas_token("relay.example.com:" + port, service_key, "service", se)),
        post_stream("other-host-no-port", "dev1", sas_token("relay.example.com", service_key, "service", se)),
        // This relay without its port is still this relay.
        post_stream("host-without-port", "dev1", sas_token("127.0.0.1", service_key, "service", se)),
        // A stream token scoped to one device's twin.
        post_stream("scoped-covered", "dev1", sas_token(host + "/twins/dev1", service_key, "service", se)),
        post_stream("scoped-prefix-only", "dev10", sas_token(host + "/twins/dev1", service_key, "service", se)),
    };
    // The device policy, scoped to device "a": opens a's control connection, not ab's.
    const std::string scoped_a = sas_token(host + "/devices/a", device_policy_key, "device", se);
    append(steps, upgrade("device-policy-ab", "ab", "/devices/ab/streams", {auth(scoped_a)}));
    append(steps, upgrade("device-policy-a", "a", "/devices/a/streams", {auth(scoped_a)}));
    wire_result w = wire_script(relay, steps);

    check_error(w, "other-host", 401003, "another host");
    check_error(w, "other-host-no-port", 401003, "another host");
    check_error(w, "host-without-port", 404103);  // authorized; the device is just offline
    check_error(w, "scoped-covered", 404103);
    check_error(w, "scoped-prefix-only", 401003, "does not cover");
    check_error(w, "device-policy-ab", 401003, "does not cover");
    check_status(w, "device-policy-a", 101);
}

TEST_CASE("security: each operation needs its permission, and the refusal names it",
          "[integration][security]") {
    relay_fixture relay;
    const std::string host = relay_host(relay);
    const std::string device_cs = relay.create_device("perm-device");
    const long long se = unix_now() + 600;
    auto policy_token = [&](const std::string& policy) {
        return sas_token(host, policy_key(relay, policy), policy, se);
    };
    const std::string device_key_token =
        sas_token(host + "/devices/perm-device", cs_field(device_cs, "SharedAccessKey"), "", se);
    const std::string control = "/devices/perm-device/streams";

    std::vector<std::string> steps = {
        step({{"op", "connect"}, {"conn", "c"}}),
        post_stream("registryRead-stream", "perm-device", policy_token("registryRead")),
        post_stream("registryReadWrite-stream", "perm-device", policy_token("registryReadWrite")),
        post_stream("device-policy-stream", "perm-device", policy_token("device")),
        post_stream("device-key-stream", "perm-device", device_key_token),
        post_stream("service-stream", "perm-device", policy_token("service")),
        post_stream("owner-stream", "perm-device", policy_token("iothubowner")),
        step({{"op", "request"}, {"label", "service-registry-read"}, {"conn", "c"}, {"method", "GET"},
              {"path", "/devices/perm-device"}, {"headers", std::vector<std::string>{auth(policy_token("service"))}}}),
        step({{"op", "request"}, {"label", "registryRead-registry-read"}, {"conn", "c"}, {"method", "GET"},
              {"path", "/devices/perm-device"},
              {"headers", std::vector<std::string>{auth(policy_token("registryRead"))}}}),
        step({{"op", "request"}, {"label", "registryRead-registry-write"}, {"conn", "c"}, {"method", "PUT"},
              {"path", "/devices/perm-device"}, {"body", R"({"status":"disabled"})"},
              {"headers", std::vector<std::string>{auth(policy_token("registryRead"))}}}),
    };
    append(steps, upgrade("service-control", "s1", control, {auth(policy_token("service"))}));
    append(steps, upgrade("registryReadWrite-control", "s2", control, {auth(policy_token("registryReadWrite"))}));
    append(steps, upgrade("device-policy-control", "s3", control, {auth(policy_token("device"))}));
    wire_result w = wire_script(relay, steps);

    check_error(w, "registryRead-stream", 401003, "ServiceConnect");
    check_error(w, "registryReadWrite-stream", 401003, "ServiceConnect");
    check_error(w, "device-policy-stream", 401003, "ServiceConnect");
    check_error(w, "device-key-stream", 401003);
    check_error(w, "service-stream", 404103);  // authorized: the device is offline
    check_error(w, "owner-stream", 404103);
    check_error(w, "service-registry-read", 401003, "RegistryRead");
    check_status(w, "registryRead-registry-read", 200);
    check_error(w, "registryRead-registry-write", 401003, "RegistryWrite");
    check_error(w, "service-control", 401003, "DeviceConnect");
    check_error(w, "registryReadWrite-control", 401003, "DeviceConnect");
    check_status(w, "device-policy-control", 101);
    // The refused registry write changed nothing.
    CHECK(contains(admin_ok(relay, {"device-identity", "show", "--device-id", "perm-device"}), "\"status\":\"enabled\""));
}

TEST_CASE("security: a device connects with its primary or its secondary key", "[integration][security]") {
    relay_fixture relay;
    echo_server target;
    relay.create_device("two-keys");
    for (const std::string key_type : {"secondary", "primary"}) {
        INFO("key type " << key_type);
        auto proxy = spawn_device_proxy(relay, "device-proxy-" + key_type,
                                        device_connection_string(relay, "two-keys", key_type), target.port(),
                                        {"--exit-on-auth-failure"});
        bool connected = relay.wait_device_connected("two-keys", *proxy);
        INFO(proxy->describe());
        REQUIRE(connected);
        proxy.reset();
        CHECK(wait_state(relay, "two-keys", "Disconnected", 10s));
    }
}

TEST_CASE("security: renewing a key cuts off the live connection that used it, at once",
          "[integration][security]") {
    relay_fixture relay;
    echo_server target;
    relay.create_device("renew-a");
    relay.create_device("renew-b");
    const std::string old_primary_a = device_connection_string(relay, "renew-a", "primary");
    auto proxy_a = spawn_device_proxy(relay, "device-proxy-a", old_primary_a, target.port());
    // renew-b uses its secondary key, which renewing the primary must leave alone.
    auto proxy_b = spawn_device_proxy(relay, "device-proxy-b", device_connection_string(relay, "renew-b", "secondary"),
                                      target.port());
    REQUIRE(relay.wait_device_connected("renew-a", *proxy_a));
    REQUIRE(relay.wait_device_connected("renew-b", *proxy_b));

    admin_ok(relay, {"device-identity", "update", "--device-id", "renew-a", "--renew-key", "primary"});
    admin_ok(relay, {"device-identity", "update", "--device-id", "renew-b", "--renew-key", "primary"});
    const auto renewed = steady::now();
    {
        bool cut = wait_state(relay, "renew-a", "Disconnected", 5s);
        INFO(proxy_a->describe());
        CHECK(cut);
        CHECK(wait_until([&] { return contains(proxy_a->stderr_text(), "lost connection to relay"); }, 5s));
        CHECK(contains(proxy_a->stderr_text(), "401003"));
        INFO("cut off after " << std::chrono::duration_cast<millis>(steady::now() - renewed).count() << " ms");
        CHECK(steady::now() - renewed < 5s);
    }
    // The proxy keeps retrying with the old key: refused every time.
    CHECK_FALSE(wait_until([&] { return relay.device_connected("renew-a"); }, 3s, 200ms));
    CHECK(occurrences(relay.relay().stderr_text(), "event=DeviceRevoked device=renew-a") >= 1);
    // The admin commands ran in other processes; the relay's log still says who changed what.
    const std::regex audited(R"(event=RegistryChange source="admin-cli uid=\d+[^"]*" op=device-update subject=renew-a )"
                             R"(detail="status=enabled renew-key=primary")");
    CHECK(wait_until([&] { return std::regex_search(relay.relay().stderr_text(), audited); }, 5s));
    // The secondary key of renew-b still works, on its live connection too.
    CHECK(relay.device_connected("renew-b"));
    CHECK_FALSE(contains(proxy_b->stderr_text(), "401003"));
    proxy_a.reset();

    // A new proxy with the old string is refused; one with the new string connects.
    {
        auto stale = spawn_device_proxy(relay, "device-proxy-stale", old_primary_a, target.port(),
                                        {"--exit-on-auth-failure"});
        auto code = stale->wait_exit(k_fail_timeout);
        INFO(stale->describe());
        CHECK(code == 3);
        CHECK(contains(stale->stderr_text(), "401003"));
    }
    const std::string new_primary_a = device_connection_string(relay, "renew-a", "primary");
    CHECK(new_primary_a != old_primary_a);
    auto fresh = spawn_device_proxy(relay, "device-proxy-fresh", new_primary_a, target.port());
    CHECK(relay.wait_device_connected("renew-a", *fresh));
}

TEST_CASE("security: disabling or deleting a device closes its live control connection",
          "[integration][security]") {
    relay_fixture relay;
    echo_server target;
    auto proxy_d = spawn_device_proxy(relay, "device-proxy-disabled", relay.create_device("to-disable"), target.port());
    auto proxy_x = spawn_device_proxy(relay, "device-proxy-deleted", relay.create_device("to-delete"), target.port());
    auto proxy_k = spawn_device_proxy(relay, "device-proxy-kept", relay.create_device("kept"), target.port());
    REQUIRE(relay.wait_device_connected("to-disable", *proxy_d));
    REQUIRE(relay.wait_device_connected("to-delete", *proxy_x));
    REQUIRE(relay.wait_device_connected("kept", *proxy_k));

    admin_ok(relay, {"device-identity", "update", "--device-id", "to-disable", "--status", "disabled"});
    admin_ok(relay, {"device-identity", "delete", "--device-id", "to-delete"});
    {
        INFO(proxy_d->describe());
        CHECK(wait_state(relay, "to-disable", "Disconnected", 5s));
        CHECK(wait_until([&] { return contains(proxy_d->stderr_text(), "401003"); }, 5s));
    }
    {
        INFO(proxy_x->describe());
        CHECK(wait_until([&] { return contains(proxy_x->stderr_text(), "401003"); }, 5s));
        CHECK(wait_until([&] { return contains(relay.relay().stderr_text(),
                                               "event=DeviceRevoked device=to-delete"); }, 5s));
    }
    // Refused from then on, and the other device is untouched.
    CHECK_FALSE(wait_until([&] { return relay.device_connected("to-disable"); }, 3s, 200ms));
    CHECK(relay.device_connected("kept"));
    CHECK_FALSE(contains(proxy_k->stderr_text(), "401003"));
}

TEST_CASE("security: a change made without the admin CLI (an operator's SQL) re-checks every live device",
          "[integration][security]") {
    relay_fixture relay;
    echo_server target;
    auto gone = spawn_device_proxy(relay, "device-proxy-gone", relay.create_device("sql-gone"), target.port());
    auto off = spawn_device_proxy(relay, "device-proxy-off", relay.create_device("sql-off"), target.port());
    auto kept = spawn_device_proxy(relay, "device-proxy-kept", relay.create_device("sql-kept"), target.port());
    REQUIRE(relay.wait_device_connected("sql-gone", *gone));
    REQUIRE(relay.wait_device_connected("sql-off", *off));
    REQUIRE(relay.wait_device_connected("sql-kept", *kept));
    // No audit entry names these devices: the relay cannot tell which changed, so it checks all.
    run_result r = run({"sqlite3", (relay.data_dir() / "registry.db").string(),
                        "DELETE FROM devices WHERE device_id = 'sql-gone'; "
                        "UPDATE devices SET status = 'disabled' WHERE device_id = 'sql-off';"});
    INFO(r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(wait_until([&] { return contains(relay.relay().stderr_text(), "event=DeviceRevoked device=sql-gone reason=\"device was deleted\""); }, 5s));
    CHECK(wait_until([&] { return contains(relay.relay().stderr_text(), "event=DeviceRevoked device=sql-off reason=\"device was disabled\""); }, 5s));
    CHECK_FALSE(contains(relay.relay().stderr_text(), "event=DeviceRevoked device=sql-kept"));
    CHECK(relay.device_connected("sql-kept"));
}

TEST_CASE("security: stream tokens are single use, bound to their stream, device and side, and expire",
          "[integration][security]") {
    relay_fixture relay;
    const std::string host = relay_host(relay);
    const std::string device_cs = relay.create_device("tok-device");
    relay.create_device("tok-other");
    const long long se = unix_now() + 600;
    const std::string service_sas = sas_token(host, policy_key(relay, "service"), "service", se);
    const std::string service = auth(service_sas);
    const std::string device =
        auth(sas_token(host + "/devices/tok-device", cs_field(device_cs, "SharedAccessKey"), "", se));
    auto bearer = [](const std::string& token) { return "Authorization: Bearer " + token; };
    auto accept = [](const std::string& request) {
        return step({{"op", "ws_send"}, {"label", ("answer-" + request).c_str()}, {"conn", "dev"}, {"type", "text"},
                     {"data", "{\"type\":\"streamResponse\",\"requestId\":\"${" + request + ".j.requestId}\","
                              "\"accepted\":true}"}});
    };

    std::vector<std::string> steps;
    // wire_client.py is the device: it gets the stream requests (with the device-side tokens).
    append(steps, upgrade("device-control", "dev", "/devices/tok-device/streams", {device}));
    steps.push_back(wait_connected_step(relay, "tok-device"));
    append(steps, {
        step({{"op", "connect"}, {"conn", "c"}}),
        post_stream("post1", "tok-device", service_sas, {}, false),
        step({{"op", "ws_recv"}, {"label", "req1"}, {"conn", "dev"}}),
        accept("req1"),
        step({{"op", "read_response"}, {"label", "post1"}, {"conn", "c"}}),
    });
    const std::string url = "${post1.url.path}";
    const std::string service_token = "${post1.h.iothub-streaming-auth-token}";
    const std::string device_token = "${req1.j.authorizationToken}";
    // The service side joins and waits for the device.
    append(steps, upgrade("join-service", "b1", url, {bearer(service_token)}));
    // The same service token again, while the stream is still waiting: refused.
    append(steps, upgrade("replay-service", "b2", url, {bearer(service_token)}));
    // The (unused) device token on another device's URL: refused.
    append(steps, upgrade("other-device", "b3", "/bridges/${post1.url.hub}/tok-other/${post1.url.stream}",
                          {bearer(device_token)}));
    // ...on another stream id, or another hub: refused.
    append(steps, upgrade("other-stream", "b4", "/bridges/${post1.url.hub}/tok-device/0123456789abcdef",
                          {bearer(device_token)}));
    append(steps, upgrade("other-hub", "b5", "/bridges/otherhub/tok-device/${post1.url.stream}",
                          {bearer(device_token)}));
    // A made-up token, and no token.
    append(steps, upgrade("made-up", "b6", url, {bearer("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")}));
    append(steps, upgrade("no-token", "b7", url, {}));
    // The service's SAS token is not a stream token.
    append(steps, upgrade("sas-on-bridge", "b8", url, {service}));
    // The device joins with its own token: the stream carries data.
    append(steps, upgrade("join-device", "b9", url, {bearer(device_token)}));
    append(steps, {
        step({{"op", "ws_send"}, {"label", "service-says"}, {"conn", "b1"}, {"type", "binary"}, {"data", "hello device"}}),
        step({{"op", "ws_recv"}, {"label", "device-hears"}, {"conn", "b9"}}),
        step({{"op", "ws_send"}, {"label", "device-says"}, {"conn", "b9"}, {"type", "binary"}, {"data", "hello service"}}),
        step({{"op", "ws_recv"}, {"label", "service-hears"}, {"conn", "b1"}}),
    });
    // Both tokens are spent now.
    append(steps, upgrade("replay-device", "b10", url, {bearer(device_token)}));
    append(steps, upgrade("replay-service-after", "b11", url, {bearer(service_token)}));
    // A stream whose connect timeout (1 s) has passed: both tokens are dead.
    append(steps, {
        post_stream("post2", "tok-device", service_sas, {"iothub-streaming-connect-timeout-in-seconds: 1"}, false),
        step({{"op", "ws_recv"}, {"label", "req2"}, {"conn", "dev"}}),
        accept("req2"),
        step({{"op", "read_response"}, {"label", "post2"}, {"conn", "c"}}),
        step({{"op", "sleep"}, {"seconds", 3}}),
    });
    append(steps, upgrade("late-service", "b12", "${post2.url.path}", {bearer("${post2.h.iothub-streaming-auth-token}")}));
    append(steps, upgrade("late-device", "b13", "${post2.url.path}", {bearer("${req2.j.authorizationToken}")}));
    wire_result w = wire_script(relay, steps, 60s);
    INFO(w.describe());

    check_status(w, "device-control", 101);
    check_status(w, "post1", 200);
    CHECK(w.at("post1").get("h.iothub-streaming-is-accepted") == "True");
    REQUIRE(w.at("post1").get("h.iothub-streaming-auth-token").size() >= 32);
    REQUIRE(w.at("req1").get("j.authorizationToken").size() >= 32);
    CHECK(w.at("req1").get("j.authorizationToken") != w.at("post1").get("h.iothub-streaming-auth-token"));
    check_status(w, "join-service", 101);
    check_error(w, "replay-service", 401003);
    check_error(w, "other-device", 401003);
    check_error(w, "other-stream", 401003);
    check_error(w, "other-hub", 401003);
    check_error(w, "made-up", 401003);
    check_error(w, "no-token", 401003);
    check_error(w, "sas-on-bridge", 401003);
    check_status(w, "join-device", 101);
    CHECK(w.at("device-hears").get("data_hex") == to_hex_string("hello device"));
    CHECK(w.at("service-hears").get("data_hex") == to_hex_string("hello service"));
    check_error(w, "replay-device", 401003);
    check_error(w, "replay-service-after", 401003);
    check_status(w, "post2", 200);
    check_error(w, "late-service", 401003);
    check_error(w, "late-device", 401003);
    // Every refusal is an audit line.
    CHECK(occurrences(relay.relay().stderr_text(), "event=AuthFailed") >= 11);
}

TEST_CASE("security: TLS 1.2 minimum, ECDHE with AEAD only, --min-tls 1.3", "[integration][security]") {
    {
        relay_fixture relay;
        wire_result tls13 = wire(relay, {"tls-probe"});
        wire_result tls12 = wire(relay, {"tls-probe", "--max-version", "1.2"});
        wire_result tls11 = wire(relay, {"tls-probe", "--min-version", "1.0", "--max-version", "1.1"});
        // Static RSA, CBC and SHA-1 suites, all offered at once: none may be chosen.
        wire_result weak = wire(relay, {"tls-probe", "--max-version", "1.2", "--ciphers",
                                        "AES128-GCM-SHA256:AES256-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
                                        "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:DHE-RSA-AES128-GCM-SHA256"});
        INFO(tls13.describe() << "\n" << tls12.describe() << "\n" << tls11.describe() << "\n" << weak.describe());
        CHECK(tls13.at("probe").get("ok") == "true");
        CHECK(tls13.at("probe").get("version") == "TLSv1.3");
        CHECK(tls13.at("probe").get("compression") == "");
        CHECK(tls12.at("probe").get("ok") == "true");
        CHECK(tls12.at("probe").get("version") == "TLSv1.2");
        CHECK(std::regex_match(tls12.at("probe").get("cipher"), std::regex("ECDHE-(RSA|ECDSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)")));
        CHECK(tls12.at("probe").get("compression") == "");
        CHECK(tls11.at("probe").get("ok") == "false");
        CHECK(tls11.at("probe").num("received") > 0);  // the relay answered (an alert), the client did try
        CHECK(weak.at("probe").get("ok") == "false");
        CHECK(weak.at("probe").num("received") > 0);
    }
    {
        relay_fixture relay(relay_config{.args = {"--min-tls", "1.3"}});
        wire_result tls13 = wire(relay, {"tls-probe"});
        wire_result tls12 = wire(relay, {"tls-probe", "--max-version", "1.2"});
        INFO(tls13.describe() << "\n" << tls12.describe());
        CHECK(tls13.at("probe").get("version") == "TLSv1.3");
        CHECK(tls12.at("probe").get("ok") == "false");
        CHECK(tls12.at("probe").num("received") > 0);
    }
}

TEST_CASE("security: a device is reachable as soon as its control connection is accepted", "[integration][security]") {
    // The relay registers the control connection before its 101 leaves, so a stream requested
    // the instant the device sees the 101 reaches the device instead of failing with 404103.
    relay_fixture relay;
    relay.create_device("race-dev");
    const std::string host = relay_host(relay);
    const long long se = unix_now() + 3600;
    const std::string device_sas = make_sas(host + "/devices/race-dev", cs_field(device_connection_string(relay, "race-dev"),
                                                                                  "SharedAccessKey"), "", se).header;
    const std::string service_sas = make_sas(host, policy_key(relay, "service"), "service", se).header;
    constexpr int rounds = 25;
    std::vector<std::string> steps = {step({{"op", "connect"}, {"conn", "svc"}})};
    for (int i = 0; i < rounds; ++i) {
        const std::string n = std::to_string(i), dev = "dev" + n;
        steps.push_back(step({{"op", "connect"}, {"conn", dev}}));
        steps.push_back(step({{"op", "upgrade"}, {"label", ("control" + n).c_str()}, {"conn", dev},
                              {"path", "/devices/race-dev/streams"}, {"headers", std::vector<std::string>{auth(device_sas)}}}));
        steps.push_back(step({{"op", "request"}, {"label", ("post" + n).c_str()}, {"conn", "svc"}, {"method", "POST"},
                              {"path", "/twins/race-dev/streams/s"}, {"headers", std::vector<std::string>{auth(service_sas)}},
                              {"read", false}}));
        steps.push_back(step({{"op", "ws_recv"}, {"label", ("request" + n).c_str()}, {"conn", dev}, {"timeout", 5}}));
        steps.push_back(step({{"op", "ws_send"}, {"conn", dev}, {"type", "text"},
                              {"data", "{\"type\":\"streamResponse\",\"requestId\":\"${request" + n +
                                           ".j.requestId}\",\"accepted\":false,\"reason\":\"round " + n + "\"}"}}));
        steps.push_back(step({{"op", "read_response"}, {"label", ("post" + n).c_str()}, {"conn", "svc"}}));
        steps.push_back(step({{"op", "close"}, {"conn", dev}}));
    }
    wire_result w = wire_script(relay, steps, 120s);
    INFO(w.describe());
    for (int i = 0; i < rounds; ++i) {
        const std::string n = std::to_string(i);
        INFO("round " << n);
        REQUIRE(w.at("control" + n).status() == 101);
        CHECK(w.at("post" + n).status() == 200);
        CHECK(w.at("post" + n).get("h.iothub-streaming-rejection-reason") == "round " + n);
    }
}
