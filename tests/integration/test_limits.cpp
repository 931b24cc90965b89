// Limits (issue 3): stream creation rates (token buckets, 429001 + Retry-After), concurrent
// streams (per device and relay-wide), connected devices, request header and control message
// sizes, and the IP filter applied before TLS.
#include <catch2/catch.hpp>

#include <regex>
#include <thread>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

std::string auth(const std::string& token) { return "Authorization: " + token; }

// wire_client.py connects as `device` (conn = the device id) with the device's own key.
std::vector<std::string> connect_device(relay_fixture& relay, const std::string& host, const std::string& device,
                                        const std::string& device_cs) {
    const std::string token =
        sas_token(host + "/devices/" + device, cs_field(device_cs, "SharedAccessKey"), "", unix_now() + 600);
    return {step({{"op", "connect"}, {"label", ("connect-" + device).c_str()}, {"conn", device}}),
            step({{"op", "upgrade"}, {"label", ("control-" + device).c_str()}, {"conn", device},
                  {"path", "/devices/" + device + "/streams"}, {"headers", std::vector<std::string>{auth(token)}}}),
            wait_connected_step(relay, device)};
}

// A stream request the (scripted) device accepts: POST, the device's answer, the response.
std::vector<std::string> accepted_stream(const std::string& label, const std::string& device,
                                         const std::string& service_token) {
    return {step({{"op", "request"}, {"label", label.c_str()}, {"conn", "svc"}, {"method", "POST"},
                  {"path", "/twins/" + device + "/streams/s"},
                  {"headers", std::vector<std::string>{auth(service_token)}}, {"read", false}}),
            step({{"op", "ws_recv"}, {"label", (label + "-request").c_str()}, {"conn", device}}),
            step({{"op", "ws_send"}, {"label", (label + "-answer").c_str()}, {"conn", device}, {"type", "text"},
                  {"data", "{\"type\":\"streamResponse\",\"requestId\":\"${" + label +
                               "-request.j.requestId}\",\"accepted\":true}"}}),
            step({{"op", "read_response"}, {"label", label.c_str()}, {"conn", "svc"}})};
}

// A stream request refused by the relay itself (the device never hears of it).
std::string refused_stream(const std::string& label, const std::string& device, const std::string& service_token) {
    return step({{"op", "request"}, {"label", label.c_str()}, {"conn", "svc"}, {"method", "POST"},
                 {"path", "/twins/" + device + "/streams/s"},
                 {"headers", std::vector<std::string>{auth(service_token)}}});
}

void check_status(const wire_result& w, const std::string& label, int status) {
    const wire_event& e = w.at(label);
    INFO("step " << label << ": " << e.line);
    CHECK(e.event() == "response");
    CHECK(e.status() == status);
}

// 429 with 429001 and a Retry-After of a whole number of seconds >= 1.
void check_throttled(const wire_result& w, const std::string& label) {
    const wire_event& e = w.at(label);
    INFO("step " << label << ": " << e.line);
    CHECK(e.event() == "response");
    CHECK(e.status() == 429);
    CHECK(e.error_code() == 429001);
    CHECK(std::regex_match(e.get("h.retry-after"), std::regex("[1-9][0-9]*")));
}

}  // namespace

TEST_CASE("limits: the per-device stream rate answers 429001 with Retry-After", "[integration][limits]") {
    relay_fixture relay(relay_config{.args = {"--device-stream-rate", "1", "--device-stream-burst", "2"}});
    const std::string host = relay_host(relay);
    const std::string d1 = relay.create_device("rate-1");
    const std::string d2 = relay.create_device("rate-2");
    const std::string service = sas_token(host, policy_key(relay, "service"), "service", unix_now() + 600);

    std::vector<std::string> steps = connect_device(relay, host, "rate-1", d1);
    for (auto& s : connect_device(relay, host, "rate-2", d2)) steps.push_back(s);
    steps.push_back(step({{"op", "connect"}, {"conn", "svc"}}));
    for (auto& s : accepted_stream("first", "rate-1", service)) steps.push_back(s);
    for (auto& s : accepted_stream("second", "rate-1", service)) steps.push_back(s);
    steps.push_back(refused_stream("third", "rate-1", service));
    // Another device has its own bucket.
    for (auto& s : accepted_stream("other-device", "rate-2", service)) steps.push_back(s);
    // The bucket refills at 1/s.
    steps.push_back(step({{"op", "sleep"}, {"seconds", 1.3}}));
    for (auto& s : accepted_stream("after-refill", "rate-1", service)) steps.push_back(s);
    steps.push_back(refused_stream("after-refill-again", "rate-1", service));
    wire_result w = wire_script(relay, steps);
    INFO(w.describe());

    check_status(w, "first", 200);
    check_status(w, "second", 200);
    check_throttled(w, "third");
    check_status(w, "other-device", 200);
    check_status(w, "after-refill", 200);
    check_throttled(w, "after-refill-again");
    CHECK(contains(relay.relay().stderr_text(), "result=429001"));
}

TEST_CASE("limits: the relay-wide stream rate and concurrent stream limit", "[integration][limits]") {
    SECTION("--stream-rate 1 --stream-burst 2") {
        relay_fixture relay(relay_config{.args = {"--stream-rate", "1", "--stream-burst", "2"}});
        const std::string host = relay_host(relay);
        const std::string d1 = relay.create_device("g-1");
        const std::string d2 = relay.create_device("g-2");
        const std::string service = sas_token(host, policy_key(relay, "service"), "service", unix_now() + 600);
        std::vector<std::string> steps = connect_device(relay, host, "g-1", d1);
        for (auto& s : connect_device(relay, host, "g-2", d2)) steps.push_back(s);
        steps.push_back(step({{"op", "connect"}, {"conn", "svc"}}));
        for (auto& s : accepted_stream("first", "g-1", service)) steps.push_back(s);
        for (auto& s : accepted_stream("second", "g-2", service)) steps.push_back(s);
        steps.push_back(refused_stream("third", "g-1", service));
        steps.push_back(refused_stream("fourth", "g-2", service));
        wire_result w = wire_script(relay, steps);
        INFO(w.describe());
        check_status(w, "first", 200);
        check_status(w, "second", 200);
        check_throttled(w, "third");
        check_throttled(w, "fourth");
    }
    SECTION("--max-streams 2") {
        relay_fixture relay(relay_config{.args = {"--max-streams", "2"}});
        const std::string host = relay_host(relay);
        const std::string d1 = relay.create_device("g-1");
        const std::string d2 = relay.create_device("g-2");
        const std::string service = sas_token(host, policy_key(relay, "service"), "service", unix_now() + 600);
        std::vector<std::string> steps = connect_device(relay, host, "g-1", d1);
        for (auto& s : connect_device(relay, host, "g-2", d2)) steps.push_back(s);
        steps.push_back(step({{"op", "connect"}, {"conn", "svc"}}));
        // Accepted streams hold their slot until they end or their connect timeout passes.
        for (auto& s : accepted_stream("first", "g-1", service)) steps.push_back(s);
        for (auto& s : accepted_stream("second", "g-2", service)) steps.push_back(s);
        steps.push_back(refused_stream("third", "g-1", service));
        wire_result w = wire_script(relay, steps);
        INFO(w.describe());
        check_status(w, "first", 200);
        check_status(w, "second", 200);
        check_throttled(w, "third");
    }
}

TEST_CASE("limits: --max-streams-per-device refuses a third stream until one ends", "[integration][limits]") {
    echo_server target;
    tunnel_fixture t({.target_port = target.port(), .relay_args = {"--max-streams-per-device", "2"}});
    std::string error;
    unique_fd one = echo_probe(t.local_port, 1024, error);
    INFO(error);
    REQUIRE(one);
    unique_fd two = echo_probe(t.local_port, 1024, error);
    REQUIRE(two);

    // The third connection's stream is refused: the service proxy closes it and logs 429001.
    {
        unique_fd third = connect_tcp(t.local_port);
        closed_result c = wait_closed(third.get(), k_fail_timeout);
        INFO(t.service_proxy->describe() << ": " << c.how);
        CHECK(c.closed);
        CHECK(c.received == 0);
        CHECK(wait_until([&] { return contains(t.service_proxy->stderr_text(), "429001"); }, k_fail_timeout));
    }
    CHECK(contains(t.relay.relay().stderr_text(), "result=429001"));

    // The two streams are unharmed; once one ends, a new one works.
    transfer_result still = transfer(two.get(), random_bytes(4096), {.receive_exactly = 4096, .timeout = k_fail_timeout});
    CHECK(still.ok());
    one.reset();
    unique_fd again;
    wait_until(
        [&] {
            again = echo_probe(t.local_port, 1024, error, 5s);
            return static_cast<bool>(again);
        },
        15s, 200ms);
    INFO(error);
    CHECK(again);
}

TEST_CASE("limits: --max-devices refuses another device's control connection", "[integration][limits]") {
    relay_fixture relay(relay_config{.args = {"--max-devices", "1"}});
    echo_server target;
    const std::string first_cs = relay.create_device("first");
    auto first = spawn_device_proxy(relay, "device-proxy-first", first_cs, target.port());
    REQUIRE(relay.wait_device_connected("first", *first));
    auto second = spawn_device_proxy(relay, "device-proxy-second", relay.create_device("second"), target.port());
    {
        bool refused = wait_until([&] { return contains(second->stderr_text(), "429001"); }, k_fail_timeout);
        INFO(second->describe());
        CHECK(refused);
        CHECK_FALSE(relay.device_connected("second"));
    }
    // The connected device may replace its own connection.
    auto first_again = spawn_device_proxy(relay, "device-proxy-first-again", first_cs, target.port());
    CHECK(wait_until([&] { return contains(first->stderr_text(), "400027"); }, k_connect_timeout));
    CHECK(relay.device_connected("first"));
    CHECK(contains(relay.relay().stderr_text(), "event=LimitHit limit=controlConnections"));
}

TEST_CASE("limits: request headers beyond --max-header-bytes get 400000 and the relay keeps serving",
          "[integration][limits]") {
    relay_fixture relay(relay_config{.args = {"--max-header-bytes", "4096"}});
    const std::string host = relay_host(relay);
    const std::string read_token = sas_token(host, policy_key(relay, "registryRead"), "registryRead", unix_now() + 600);
    relay.create_device("hdr-device");
    auto get_device = [&](const std::string& label, const std::string& conn, int pad) {
        return step({{"op", "request"}, {"label", label.c_str()}, {"conn", conn}, {"method", "GET"},
                     {"path", "/devices/hdr-device"}, {"headers", std::vector<std::string>{auth(read_token)}},
                     {"pad_header_bytes", pad}});
    };
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "a"}}),
        get_device("small", "a", 2000),
        step({{"op", "connect"}, {"conn", "b"}}),
        get_device("huge", "b", 100 * 1024),
        step({{"op", "connect"}, {"conn", "c"}}),
        get_device("just-over", "c", 5000),
        step({{"op", "connect"}, {"conn", "d"}}),
        get_device("after", "d", 0),
    });
    INFO(w.describe());
    check_status(w, "small", 200);
    {
        const wire_event& e = w.at("huge");
        INFO(e.line);
        // A 400 with 400000, or (when the relay hung up while we were still sending) a close.
        CHECK((e.event() == "closed" || e.event() == "send_failed" || (e.status() == 400 && e.error_code() == 400000)));
    }
    {
        const wire_event& e = w.at("just-over");
        INFO(e.line);
        CHECK(e.status() == 400);
        CHECK(e.error_code() == 400000);
    }
    check_status(w, "after", 200);
    CHECK(relay.relay().running());
}

TEST_CASE("limits: a control message beyond --max-control-message closes the control connection",
          "[integration][limits]") {
    relay_fixture relay(relay_config{.args = {"--max-control-message", "1024"}});
    const std::string host = relay_host(relay);
    const std::string cs = relay.create_device("big-talker");
    std::vector<std::string> steps = connect_device(relay, host, "big-talker", cs);
    const std::string big = "{\"type\":\"streamResponse\",\"requestId\":\"" + std::string(2000, 'x') +
                            "\",\"accepted\":true}";
    steps.push_back(step({{"op", "ws_send"}, {"label", "small"}, {"conn", "big-talker"}, {"type", "text"},
                          {"data", "{\"type\":\"streamResponse\",\"requestId\":\"x\",\"accepted\":true}"}}));
    steps.push_back(step({{"op", "ws_quiet"}, {"label", "after-small"}, {"conn", "big-talker"}, {"seconds", 1}}));
    steps.push_back(step({{"op", "ws_send"}, {"label", "big"}, {"conn", "big-talker"}, {"type", "text"}, {"data", big}}));
    steps.push_back(step({{"op", "ws_recv"}, {"label", "after-big"}, {"conn", "big-talker"}, {"timeout", 5}}));
    wire_result w = wire_script(relay, steps);
    INFO(w.describe());
    check_status(w, "control-big-talker", 101);
    CHECK(w.at("after-small").event() == "quiet");
    const wire_event& e = w.at("after-big");
    INFO(e.line);
    REQUIRE(e.event() == "close");
    CHECK(e.num("code") == 1009);
    CHECK(wait_until([&] { return device_state(relay, "big-talker") == "Disconnected"; }, 5s, 100ms));
}

TEST_CASE("limits: the IP filter closes rejected peers before TLS and logs them", "[integration][limits]") {
    SECTION("reject one address") {
        relay_fixture relay(relay_config{.args = {"--ip-filter", "reject 127.0.0.2/32"}});
        wire_result rejected = wire(relay, {"tls-probe", "--source", "127.0.0.2"});
        wire_result accepted = wire(relay, {"tls-probe", "--source", "127.0.0.1"});
        wire_result neighbour = wire(relay, {"tls-probe", "--source", "127.0.0.3"});
        INFO(rejected.describe() << "\n" << accepted.describe() << "\n" << neighbour.describe());
        const wire_event& r = rejected.at("probe");
        CHECK(r.event() == "probe");
        CHECK(r.get("ok") == "false");
        CHECK(r.num("received") == 0);  // not a byte of TLS: no ServerHello, no alert
        CHECK(accepted.at("probe").get("ok") == "true");
        CHECK(neighbour.at("probe").get("ok") == "true");
        const std::string log = relay.relay().stderr_text();
        CHECK(contains(log, "event=IpFiltered peer=127.0.0.2:"));
        CHECK(contains(log, "rule=\"reject 127.0.0.2/32\""));
        CHECK_FALSE(contains(log, "event=IpFiltered peer=127.0.0.1:"));
        CHECK_FALSE(contains(log, "event=IpFiltered peer=127.0.0.3:"));
    }
    SECTION("ordered rules: the first match decides") {
        relay_fixture relay(relay_config{
            .args = {"--ip-filter", "accept 127.0.0.1/32", "--ip-filter", "accept 127.0.0.5/32", "--ip-filter",
                     "reject 127.0.0.0/8", "--ip-filter", "accept 127.0.0.6/32"}});
        wire_result one = wire(relay, {"tls-probe", "--source", "127.0.0.1"});
        wire_result five = wire(relay, {"tls-probe", "--source", "127.0.0.5"});
        wire_result six = wire(relay, {"tls-probe", "--source", "127.0.0.6"});
        wire_result nine = wire(relay, {"tls-probe", "--source", "127.0.0.9"});
        INFO(one.describe() << "\n" << five.describe() << "\n" << six.describe() << "\n" << nine.describe());
        CHECK(one.at("probe").get("ok") == "true");
        CHECK(five.at("probe").get("ok") == "true");
        CHECK(six.at("probe").get("ok") == "false");  // rejected by the /8 before its own rule
        CHECK(six.at("probe").num("received") == 0);
        CHECK(nine.at("probe").get("ok") == "false");
        CHECK(nine.at("probe").num("received") == 0);
        CHECK(contains(relay.relay().stderr_text(), "rule=\"reject 127.0.0.0/8\""));
    }
}

TEST_CASE("limits: --idle-stream-timeout closes a silent stream and spares a busy one", "[integration][limits]") {
    echo_server target;
    tunnel_fixture t({.target_port = target.port(), .relay_args = {"--idle-stream-timeout", "2"}});
    std::string error;
    unique_fd silent = echo_probe(t.local_port, 1024, error);
    INFO(error);
    REQUIRE(silent);
    unique_fd busy = echo_probe(t.local_port, 1024, error);
    REQUIRE(busy);

    // The busy stream moves a little every 400 ms for 5 s: never idle for 2 s.
    const auto started = steady::now();
    bool busy_ok = true;
    while (steady::now() - started < 5s && busy_ok) {
        transfer_result r = transfer(busy.get(), random_bytes(100), {.receive_exactly = 100, .timeout = 5s});
        busy_ok = r.ok();
        INFO(r.error);
        CHECK(r.ok());
        std::this_thread::sleep_for(400ms);
    }
    // By now the silent one was cut off (2 s of silence, checked about every second).
    closed_result c = wait_closed(silent.get(), 3s);
    INFO(c.how << " after " << c.elapsed.count() << " ms more");
    CHECK(c.closed);
    CHECK(c.received == 0);
    CHECK(busy_ok);
    CHECK(contains(t.relay.relay().stderr_text(), "result=idle timeout"));
    // The busy one still works.
    transfer_result r = transfer(busy.get(), random_bytes(4096), {.receive_exactly = 4096, .timeout = 5s});
    INFO(r.error);
    CHECK(r.ok());
}
