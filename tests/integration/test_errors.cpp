// Failures users hit: offline or unknown device, wrong keys, disabled device, duplicate device.
#include <catch2/catch.hpp>

#include <regex>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

// Runs a --stdio service proxy (our end of the socket pair stays open, as ssh keeps it) and
// expects it to fail fast with `code` on stderr.
void expect_stdio_failure(relay_fixture& relay, const std::string& service_cs,
                          const std::string& device_id, const std::string& code,
                          const std::vector<std::string>& options = {}) {
    auto [mine, theirs] = socket_pair();
    auto proxy = spawn_stdio_service_proxy(relay, service_cs, device_id, theirs.get(), options);
    theirs.reset();
    std::optional<int> exit_code = proxy->wait_exit(k_fail_timeout);
    INFO("expected " << code << " for device " << device_id);
    INFO(proxy->describe());
    REQUIRE(exit_code.has_value());
    CHECK(*exit_code != 0);
    CHECK(contains(proxy->stderr_text(), code));
}

// Starts a device proxy with `device_cs` (target: a closed port, no stream is expected), waits
// until its stderr names 401003, then checks that the device does not become Connected.
void expect_device_refused(relay_fixture& relay, const std::string& device_id,
                           const std::string& device_cs) {
    auto proxy = relay.spawn("device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(),
                                              device_cs, "127.0.0.1", std::to_string(free_port())});
    bool refused = wait_until([&] { return contains(proxy->stderr_text(), "401003"); }, k_connect_timeout);
    INFO(proxy->describe());
    REQUIRE(refused);
    CHECK_FALSE(wait_until([&] { return relay.device_connected(device_id); }, 3s, 200ms));
}

// A registered device and the Authorization headers of a hand-scripted device (its SAS token)
// and service (the "service" policy's), for wire_client.py scripts.
struct scripted_parties {
    std::string device, service;
};
scripted_parties register_scripted_device(relay_fixture& relay, const std::string& device_id) {
    const std::string host = relay_host(relay);
    const long long se = unix_now() + 600;
    const std::string cs = relay.create_device(device_id);
    return {"Authorization: " + sas_token(host + "/devices/" + device_id, cs_field(cs, "SharedAccessKey"), "", se),
            "Authorization: " + sas_token(host, policy_key(relay, "service"), "service", se)};
}

}  // namespace

TEST_CASE("errors: a device that exists but is offline gets 404103 at once", "[integration][errors]") {
    relay_fixture relay;
    relay.create_device("offline-device");
    expect_stdio_failure(relay, relay.service_connection_string(), "offline-device", "404103");
}

TEST_CASE("errors: an unknown device gets 404001", "[integration][errors]") {
    relay_fixture relay;
    expect_stdio_failure(relay, relay.service_connection_string(), "no-such-device", "404001");
}

TEST_CASE("errors: local port mode closes the connection of a failed stream and keeps listening",
          "[integration][errors]") {
    relay_fixture relay;
    relay.create_device("offline-device");
    const int port = free_port();
    auto proxy = relay.spawn("service-proxy", {bin::service_proxy, "--ca-file", relay.ca_file().string(),
                                               relay.service_connection_string(), "offline-device",
                                               std::to_string(port)});
    bool up = wait_until([&] { return !proxy->running() || port_listening(port); }, k_start_timeout);
    {
        INFO(proxy->describe());
        REQUIRE(up);
        REQUIRE(proxy->running());
    }
    unique_fd conn = connect_tcp(port);
    transfer_result r = transfer(conn.get(), {}, {.timeout = k_fail_timeout});  // read until EOF
    INFO(proxy->describe());
    INFO(r.error);
    CHECK_FALSE(contains(r.error, "timed out"));  // closed (EOF or reset), not left hanging
    CHECK(r.received == 0);
    CHECK(wait_until([&] { return contains(proxy->stderr_text(), "404103"); }, k_fail_timeout));
    CHECK(proxy->running());
}

TEST_CASE("errors: a wrong service key gets 401003 whether or not the device exists",
          "[integration][errors]") {
    relay_fixture relay;
    relay.create_device("some-device");
    const std::string wrong = with_wrong_key(relay.service_connection_string());
    expect_stdio_failure(relay, wrong, "some-device", "401003");
    expect_stdio_failure(relay, wrong, "no-such-device", "401003");
}

TEST_CASE("errors: a wrong device key gets 401003 and the device never connects",
          "[integration][errors]") {
    relay_fixture relay;
    const std::string device_cs = relay.create_device("wrong-key-device");
    expect_device_refused(relay, "wrong-key-device", with_wrong_key(device_cs));
}

TEST_CASE("errors: a disabled device cannot connect", "[integration][errors]") {
    relay_fixture relay;
    const std::string device_cs = relay.create_device("disabled-device");
    {
        const std::vector<std::string> args = {"device-identity", "update", "--device-id",
                                               "disabled-device", "--status", "disabled"};
        run_result r = relay.admin(args);
        INFO(describe(args, r));
        REQUIRE(r.exit_code == 0);
    }
    {
        const std::vector<std::string> args = {"device-identity", "show", "--device-id", "disabled-device"};
        run_result r = relay.admin(args);
        INFO(describe(args, r));
        REQUIRE(r.exit_code == 0);
        CHECK(std::regex_search(r.out, std::regex(R"re("status"\s*:\s*"disabled")re")));
    }
    expect_device_refused(relay, "disabled-device", device_cs);
}

TEST_CASE("errors: creating an existing device fails with 409001", "[integration][errors]") {
    relay_fixture relay;
    relay.create_device("dup-device");
    const std::vector<std::string> args = {"device-identity", "create", "--device-id", "dup-device"};
    run_result r = relay.admin(args);
    INFO(describe(args, r));
    REQUIRE(r.exit_code.has_value());
    CHECK(*r.exit_code != 0);
    CHECK(contains(r.err, "409001"));
    CHECK(trim(r.out).empty());
}

TEST_CASE("errors: a device that joins before its answer arrived and a service that never joins: the device's "
          "side is closed 504101 after the connect timeout, not the response timeout as well",
          "[integration][errors]") {
    relay_fixture relay;
    const auto [device, service] = register_scripted_device(relay, "early-join");
    const auto started = steady::now();
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/early-join/streams"},
              {"headers", std::vector<std::string>{device}}}),
        wait_connected_step(relay, "early-join"),
        step({{"op", "connect"}, {"conn", "svc"}}),
        step({{"op", "request"}, {"label", "post"}, {"conn", "svc"}, {"method", "POST"},
              {"path", "/twins/early-join/streams/s"},
              {"headers", std::vector<std::string>{service, "iothub-streaming-connect-timeout-in-seconds: 2",
                                                   "iothub-streaming-response-timeout-in-seconds: 60"}},
              {"read", false}}),
        step({{"op", "ws_recv"}, {"label", "request"}, {"conn", "dev"}}),
        // The device's data connection first, its answer second.
        step({{"op", "connect"}, {"conn", "join"}}),
        step({{"op", "upgrade"}, {"label", "join"}, {"conn", "join"}, {"path", "${request.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${request.j.authorizationToken}"}}}),
        step({{"op", "ws_send"}, {"label", "answer"}, {"conn", "dev"}, {"type", "text"},
              {"data", R"({"type":"streamResponse","requestId":"${request.j.requestId}","accepted":true})"}}),
        step({{"op", "read_response"}, {"label", "post"}, {"conn", "svc"}}),
        // The service never joins.
        step({{"op", "ws_recv"}, {"label", "closed"}, {"conn", "join"}, {"timeout", 20}}),
    }, 40s);
    const auto took = std::chrono::duration_cast<millis>(steady::now() - started);
    INFO(w.describe());
    CHECK(w.at("join").status() == 101);
    CHECK(w.at("post").status() == 200);
    const wire_event& closed = w.at("closed");
    CHECK(closed.event() == "close");
    CHECK(contains(closed.get("reason"), "504101"));
    CHECK(took < 15s);  // connect timeout 2 s; before the fix it waited 60 s + 2 s
    CHECK(contains(relay.relay().stderr_text(), "reason=\"service side never joined\""));
}

TEST_CASE("errors: a device that joins before answering and then disconnects or rejects: its side is closed "
          "at once with the reason, not held until the response timeout",
          "[integration][errors]") {
    const bool disconnects = GENERATE(true, false);
    relay_fixture relay;
    const auto [device, service] = register_scripted_device(relay, "early-join");
    // The device's data connection first, then no answer at all (its control connection ends)
    // or a rejection.
    const std::string ending =
        disconnects ? step({{"op", "close"}, {"label", "answer"}, {"conn", "dev"}})
                    : step({{"op", "ws_send"}, {"label", "answer"}, {"conn", "dev"}, {"type", "text"},
                            {"data", R"({"type":"streamResponse","requestId":"${request.j.requestId}","accepted":false,"reason":"no"})"}});
    const auto started = steady::now();
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/early-join/streams"},
              {"headers", std::vector<std::string>{device}}}),
        wait_connected_step(relay, "early-join"),
        step({{"op", "connect"}, {"conn", "svc"}}),
        step({{"op", "request"}, {"label", "post"}, {"conn", "svc"}, {"method", "POST"},
              {"path", "/twins/early-join/streams/s"},
              {"headers", std::vector<std::string>{service, "iothub-streaming-connect-timeout-in-seconds: 30",
                                                   "iothub-streaming-response-timeout-in-seconds: 60"}},
              {"read", false}}),
        step({{"op", "ws_recv"}, {"label", "request"}, {"conn", "dev"}}),
        step({{"op", "connect"}, {"conn", "join"}}),
        step({{"op", "upgrade"}, {"label", "join"}, {"conn", "join"}, {"path", "${request.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${request.j.authorizationToken}"}}}),
        ending,
        step({{"op", "read_response"}, {"label", "post"}, {"conn", "svc"}}),
        step({{"op", "ws_recv"}, {"label", "closed"}, {"conn", "join"}, {"timeout", 20}}),
    }, 40s);
    const auto took = std::chrono::duration_cast<millis>(steady::now() - started);
    INFO((disconnects ? "the device disconnects" : "the device rejects") << "\n" << w.describe());
    CHECK(w.at("join").status() == 101);
    const wire_event& closed = w.at("closed");
    CHECK(closed.event() == "close");
    if (disconnects) {
        CHECK(w.at("post").status() == 404);
        CHECK(contains(w.at("post").get("body"), "404104"));
        CHECK(contains(closed.get("reason"), "404104"));
        CHECK(contains(relay.relay().stderr_text(), "reason=\"the device disconnected before answering\""));
    } else {
        CHECK(w.at("post").status() == 200);
        CHECK(w.at("post").get("h.iothub-streaming-is-accepted") == "False");
        CHECK(contains(closed.get("reason"), "400000"));
        CHECK(contains(relay.relay().stderr_text(), "reason=\"the device rejected the stream it had joined\""));
    }
    CHECK(took < 15s);  // before the fix: held until the response timeout and the connect timeout (90 s)
}

TEST_CASE("errors: a side that waits for the other longer than two ping intervals is still there when it joins",
          "[integration][errors]") {
    // Nothing reads a waiting side's WebSocket, so its pongs go unread: the relay must not take
    // that for a dead peer (the connect timeout, not the ping interval, bounds the wait).
    relay_fixture relay(relay_config{.args = {"--ping-interval", "1", "--handshake-timeout", "2"}});
    const auto [device, service] = register_scripted_device(relay, "late-service");
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/late-service/streams"},
              {"headers", std::vector<std::string>{device}}}),
        wait_connected_step(relay, "late-service"),
        step({{"op", "connect"}, {"conn", "svc"}}),
        step({{"op", "request"}, {"label", "post"}, {"conn", "svc"}, {"method", "POST"},
              {"path", "/twins/late-service/streams/s"},
              {"headers", std::vector<std::string>{service, "iothub-streaming-connect-timeout-in-seconds: 30"}},
              {"read", false}}),
        step({{"op", "ws_recv"}, {"label", "request"}, {"conn", "dev"}}),
        step({{"op", "ws_send"}, {"label", "answer"}, {"conn", "dev"}, {"type", "text"},
              {"data", R"({"type":"streamResponse","requestId":"${request.j.requestId}","accepted":true})"}}),
        step({{"op", "read_response"}, {"label", "post"}, {"conn", "svc"}}),
        step({{"op", "connect"}, {"conn", "join"}}),
        step({{"op", "upgrade"}, {"label", "join"}, {"conn", "join"}, {"path", "${request.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${request.j.authorizationToken}"}}}),
        step({{"op", "sleep"}, {"seconds", 6}}),  // three handshake timeouts, six ping intervals
        step({{"op", "connect"}, {"conn", "late"}}),
        step({{"op", "upgrade"}, {"label", "late"}, {"conn", "late"}, {"path", "${request.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post.h.iothub-streaming-auth-token}"}}}),
        step({{"op", "ws_send"}, {"label", "hello"}, {"conn", "late"}, {"type", "binary"}, {"data", "hello"}}),
        step({{"op", "ws_recv"}, {"label", "forwarded"}, {"conn", "join"}, {"timeout", 10}}),
    }, 40s);
    INFO(w.describe());
    CHECK(w.at("join").status() == 101);
    CHECK(w.at("late").status() == 101);
    const wire_event& forwarded = w.at("forwarded");
    CHECK(forwarded.event() == "message");
    CHECK(forwarded.get("data_hex") == "68656c6c6f");
}

TEST_CASE("errors: a second control connection whose WebSocket handshake fails leaves the device's working "
          "connection registered",
          "[integration][errors]") {
    relay_fixture relay;
    const auto [device, service] = register_scripted_device(relay, "steady");
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/steady/streams"},
              {"headers", std::vector<std::string>{device}}}),
        wait_connected_step(relay, "steady"),
        // Authorized, but no WebSocket the relay can accept (a version it does not speak, no key).
        step({{"op", "connect"}, {"conn", "bad"}}),
        step({{"op", "request"}, {"label", "bad-upgrade"}, {"conn", "bad"}, {"method", "GET"}, {"path", "/devices/steady/streams"},
              {"headers", std::vector<std::string>{"Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 12", device}}}),
        step({{"op", "connect"}, {"conn", "svc"}}),
        step({{"op", "request"}, {"label", "post"}, {"conn", "svc"}, {"method", "POST"}, {"path", "/twins/steady/streams/s"},
              {"headers", std::vector<std::string>{service, "iothub-streaming-response-timeout-in-seconds: 10"}},
              {"read", false}}),
        step({{"op", "ws_recv"}, {"label", "request"}, {"conn", "dev"}, {"timeout", 10}}),
        step({{"op", "ws_send"}, {"label", "answer"}, {"conn", "dev"}, {"type", "text"},
              {"data", R"({"type":"streamResponse","requestId":"${request.j.requestId}","accepted":false,"reason":"test"})"}}),
        step({{"op", "read_response"}, {"label", "post"}, {"conn", "svc"}}),
    }, 40s);
    INFO(w.describe());
    CHECK(w.at("control").status() == 101);
    CHECK(w.at("bad-upgrade").status() != 101);
    CHECK(w.at("request").event() == "message");  // the stream request reached the working connection
    CHECK(w.at("post").status() == 200);
    CHECK(w.at("post").get("h.iothub-streaming-is-accepted") == "False");
    CHECK(contains(relay.relay().stderr_text(), "control handshake failed"));
}

TEST_CASE("errors: on a stream connection kept for the next stream, a good join carries it, a wrong token or "
          "a malformed join closes it with the code, an idle one is closed after 5 s, and the relay serves on",
          "[integration][errors][kept]") {
    relay_fixture relay;
    const auto [device, service] = register_scripted_device(relay, "kept");
    const std::string keep = std::string("x-streamgate-reuse: 1");
    const std::string post_headers_1 = "iothub-streaming-response-timeout-in-seconds: 10";
    auto post = [&](const std::string& label) {
        return step({{"op", "request"}, {"label", label}, {"conn", "svc"}, {"method", "POST"},
                     {"path", "/twins/kept/streams/s"},
                     {"headers", std::vector<std::string>{service, post_headers_1}}, {"read", false}});
    };
    auto accept = [&](const std::string& request) {
        return step({{"op", "ws_send"}, {"label", "answer-" + request}, {"conn", "dev"}, {"type", "text"},
                     {"data", R"({"type":"streamResponse","requestId":"${)" + request + R"(.j.requestId}","accepted":true})"}});
    };
    auto send = [&](const std::string& conn, const std::string& label, const std::string& data,
                    const std::string& type = "binary") {
        return step({{"op", "ws_send"}, {"label", label}, {"conn", conn}, {"type", type}, {"data", data}});
    };
    auto recv = [&](const std::string& conn, const std::string& label, int timeout = 10) {
        return step({{"op", "ws_recv"}, {"label", label}, {"conn", conn}, {"timeout", timeout}});
    };
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/kept/streams"},
              {"headers", std::vector<std::string>{device}}}),
        wait_connected_step(relay, "kept"),
        // Stream 1 on new connections, both asking to be kept.
        step({{"op", "connect"}, {"conn", "svc"}}),
        post("post1"),
        recv("dev", "request1"),
        step({{"op", "connect"}, {"conn", "dj"}}),
        step({{"op", "upgrade"}, {"label", "dj-upgrade"}, {"conn", "dj"}, {"path", "${request1.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${request1.j.authorizationToken}", keep}}}),
        accept("request1"),
        step({{"op", "read_response"}, {"label", "post1"}, {"conn", "svc"}}),
        step({{"op", "connect"}, {"conn", "sj"}}),
        step({{"op", "upgrade"}, {"label", "sj-upgrade"}, {"conn", "sj"}, {"path", "${post1.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post1.h.iothub-streaming-auth-token}", keep}}}),
        send("sj", "s1-data", "one"), recv("dj", "d1-data"),
        send("dj", "d1-eof", ""), recv("sj", "s1-eof"),
        send("sj", "s1-eof-sent", ""), recv("dj", "d1-eof-got"),
        // Stream 2: the device joins on its kept connection, the service tries with a wrong token.
        post("post2"),
        recv("dev", "request2"),
        send("dj", "dj-join",
             R"({"type":"join","path":"${request2.url.path}","authorization":"Bearer ${request2.j.authorizationToken}"})",
             "text"),
        recv("dj", "dj-joined"),
        accept("request2"),
        step({{"op", "read_response"}, {"label", "post2"}, {"conn", "svc"}}),
        send("sj", "sj-join", R"({"type":"join","path":"${post2.url.path}","authorization":"Bearer wrong"})", "text"),
        recv("sj", "sj-refused"),
        // The service's token is still good on a new connection, paired with the device's kept one.
        step({{"op", "connect"}, {"conn", "sj2"}}),
        step({{"op", "upgrade"}, {"label", "sj2-upgrade"}, {"conn", "sj2"}, {"path", "${post2.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post2.h.iothub-streaming-auth-token}", keep}}}),
        send("sj2", "s2-data", "two"), recv("dj", "d2-data"),
        send("dj", "d2-back", "owt"), recv("sj2", "s2-back"),
        send("sj2", "s2-eof", ""), recv("dj", "d2-eof"),
        send("dj", "d2-eof-sent", ""), recv("sj2", "s2-eof-got"),
        // Both kept again: garbage on one, silence on the other.
        send("dj", "dj-garbage", "not json", "text"), recv("dj", "dj-refused"),
        recv("sj2", "sj2-idle", 9),
        // The device's control connection still serves streams.
        post("post3"), recv("dev", "request3"),
    }, 60s);
    INFO(w.describe());
    CHECK(w.at("dj-upgrade").status() == 101);
    // Both sides were moved to the stream's thread, the one its POST ran on.
    const std::string lane = w.at("post1").get("h.x-streamgate-lane");
    CHECK_FALSE(lane.empty());
    CHECK(w.at("dj-upgrade").get("h.x-streamgate-reuse") == lane);
    CHECK(w.at("sj-upgrade").get("h.x-streamgate-reuse") == lane);
    CHECK(w.at("d1-data").get("data_hex") == "6f6e65");
    CHECK(w.at("s1-eof").get("size") == "0");
    CHECK(w.at("d1-eof-got").get("size") == "0");
    CHECK(w.at("dj-joined").get("opcode") == "text");
    CHECK(w.at("dj-joined").get("j.type") == "joined");
    CHECK(w.at("post2").status() == 200);
    CHECK(w.at("sj-refused").event() == "close");
    CHECK(w.at("sj-refused").get("code") == "1008");
    CHECK(contains(w.at("sj-refused").get("reason"), "401"));
    CHECK(w.at("sj2-upgrade").status() == 101);
    CHECK(w.at("d2-data").get("data_hex") == "74776f");
    CHECK(w.at("s2-back").get("data_hex") == "6f7774");
    CHECK(w.at("s2-eof-got").get("size") == "0");
    CHECK(w.at("dj-refused").get("code") == "1002");
    CHECK(contains(w.at("dj-refused").get("reason"), "400000"));
    CHECK(w.at("sj2-idle").event() == "close");
    CHECK(w.at("sj2-idle").get("code") == "1001");
    CHECK(w.at("request3").event() == "message");
    const std::string log = relay.relay().stderr_text();
    CHECK(contains(log, "serviceJoin=new deviceJoin=kept"));
    CHECK(contains(log, "endpoint=bridge"));
}

TEST_CASE("errors: an open on a kept connection: an accepted one joins it (the device accepting in its join), "
          "a rejection, a bad signature or an unknown device is answered on it, and it stays kept",
          "[integration][errors][kept]") {
    relay_fixture relay;
    const auto [device, service] = register_scripted_device(relay, "opener");
    const std::string keep = "x-streamgate-reuse: 1";
    const std::string sas = service.substr(std::string("Authorization: ").size());
    auto open = [&](const std::string& label, const std::string& device_id, const std::string& authorization) {
        return step({{"op", "ws_send"}, {"label", label}, {"conn", "sj"}, {"type", "text"},
                     {"data", R"({"type":"open","deviceId":")" + device_id +
                                  R"(","streamName":"s","authorization":")" + authorization +
                                  R"(","connectTimeout":5,"responseTimeout":5})"}});
    };
    auto send = [&](const std::string& conn, const std::string& label, const std::string& data,
                    const std::string& type = "binary") {
        return step({{"op", "ws_send"}, {"label", label}, {"conn", conn}, {"type", type}, {"data", data}});
    };
    auto recv = [&](const std::string& conn, const std::string& label) {
        return step({{"op", "ws_recv"}, {"label", label}, {"conn", conn}, {"timeout", 10}});
    };
    auto end_both_ways = [&](const std::string& n) {
        return std::vector<std::string>{send("sj", "s-eof" + n, ""), recv("dj", "d-eof" + n), send("dj", "d-eof-sent" + n, ""),
                                        recv("sj", "s-eof-got" + n)};
    };
    std::vector<std::string> steps = {
        step({{"op", "connect"}, {"conn", "dev"}}),
        step({{"op", "upgrade"}, {"label", "control"}, {"conn", "dev"}, {"path", "/devices/opener/streams"},
              {"headers", std::vector<std::string>{device}}}),
        wait_connected_step(relay, "opener"),
        // Stream 1 the usual way, on connections both asking to be kept.
        step({{"op", "connect"}, {"conn", "svc"}}),
        step({{"op", "request"}, {"label", "post1"}, {"conn", "svc"}, {"method", "POST"}, {"path", "/twins/opener/streams/s"},
              {"headers", std::vector<std::string>{service}}, {"read", false}}),
        recv("dev", "request1"),
        step({{"op", "connect"}, {"conn", "dj"}}),
        step({{"op", "upgrade"}, {"label", "dj-upgrade"}, {"conn", "dj"}, {"path", "${request1.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${request1.j.authorizationToken}", keep}}}),
        send("dev", "answer1", R"({"type":"streamResponse","requestId":"${request1.j.requestId}","accepted":true})", "text"),
        step({{"op", "read_response"}, {"label", "post1"}, {"conn", "svc"}}),
        step({{"op", "connect"}, {"conn", "sj"}}),
        step({{"op", "upgrade"}, {"label", "sj-upgrade"}, {"conn", "sj"}, {"path", "${post1.url.path}"},
              {"headers", std::vector<std::string>{"Authorization: Bearer ${post1.h.iothub-streaming-auth-token}", keep}}}),
    };
    for (auto& s : end_both_ways("1")) steps.push_back(s);
    for (auto& s : std::vector<std::string>{
             // Stream 2: an open, which the device accepts in its join.
             open("open2", "opener", sas),
             recv("dev", "request2"),
             send("dj", "dj-join2",
                  R"({"type":"join","path":"${request2.url.path}","authorization":"Bearer ${request2.j.authorizationToken}","accept":"${request2.j.requestId}"})",
                  "text"),
             recv("dj", "dj-joined2"),
             recv("sj", "opened2"),
             send("sj", "s2-data", "two"), recv("dj", "d2-data"),
         })
        steps.push_back(s);
    for (auto& s : end_both_ways("2")) steps.push_back(s);
    for (auto& s : std::vector<std::string>{
             // Answers that leave the connection kept.
             open("open3", "opener", sas),
             recv("dev", "request3"),
             send("dev", "answer3",
                  R"({"type":"streamResponse","requestId":"${request3.j.requestId}","accepted":false,"reason":"not now"})",
                  "text"),
             recv("sj", "rejected3"),
             open("open4", "opener", "SharedAccessSignature sr=x&sig=eA%3D%3D&se=1&skn=service"),
             recv("sj", "error4"),
             open("open5", "ghost", sas),
             recv("sj", "error5"),
             send("sj", "open6-garbage", R"({"type":"open","deviceId":7})", "text"),
             recv("sj", "refused6"),
         })
        steps.push_back(s);
    wire_result w = wire_script(relay, steps, 60s);
    INFO(w.describe());
    CHECK(w.at("sj-upgrade").status() == 101);
    CHECK(w.at("s-eof-got1").get("size") == "0");
    CHECK(w.at("dj-joined2").get("j.type") == "joined");
    CHECK(w.at("opened2").get("j.type") == "joined");
    CHECK(w.at("d2-data").get("data_hex") == "74776f");
    CHECK(w.at("s-eof-got2").get("size") == "0");
    CHECK(w.at("rejected3").get("j.type") == "rejected");
    CHECK(w.at("rejected3").get("j.reason") == "not now");
    CHECK(w.at("error4").get("j.type") == "error");
    CHECK(w.at("error4").get("j.errorCode") == "401003");
    CHECK(w.at("error5").get("j.type") == "error");
    CHECK(w.at("error5").get("j.errorCode") == "404001");
    CHECK(w.at("refused6").event() == "close");
    CHECK(w.at("refused6").get("code") == "1002");
    CHECK(contains(w.at("refused6").get("reason"), "400000"));
    const std::string log = relay.relay().stderr_text();
    CHECK(contains(log, "serviceJoin=kept deviceJoin=kept"));
    CHECK(count_of(log, "event=StreamAccepted") == 2);
}
