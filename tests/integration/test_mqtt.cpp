// The device-streams MQTT endpoint (issue 14): IoT Hub device code connects unmodified. The
// device side is Debian's python3-paho-mqtt (tests/integration/mqtt_device.py) and mosquitto_sub,
// over real TLS trusting the relay's ca.pem; the service side is the real service proxy. Nothing
// here links the relay's MQTT codec: raw packets are built by mqtt_device.py from the standard.
// Access (X.509, revocation, limits, the listener's configuration): test_mqtt_access.cpp.
#include "mqtt_fixture.hpp"

using namespace sgit;

TEST_CASE("mqtt: a paho device connects with its SAS, accepts a stream made through REST and echoes 1 MiB",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("mqtt-dev");
    auto dev = r.device("mqtt-device", "mqtt-dev", {"--sas", r.device_sas("mqtt-dev")});

    // Online whichever protocol: registry over REST, metrics and the status page.
    CHECK(r.rest_connection_state("mqtt-dev") == "Connected");
    CHECK(device_state(r.relay, "mqtt-dev") == "Connected");
    auto metrics = http_get(r.admin_address, "/metrics");
    CHECK(metric(metrics.body, "streamgate_devices_connected") == 1.0);
    auto status = http_get(r.admin_address, "/api/status");
    CHECK(contains(status.body, "mqtt-dev"));
    CHECK(contains(r.relay.relay().stderr_text(), "event=DeviceConnected device=mqtt-dev"));
    CHECK(contains(r.relay.relay().stderr_text(), "protocol=mqtt"));

    unique_fd mine;
    auto svc = r.service("mqtt-dev", mine);
    const bytes data = random_bytes(1024 * 1024);
    transfer_result t = transfer(mine.get(), data, {.shutdown_after_send = true, .timeout = k_transfer_timeout});
    INFO(svc->describe());
    INFO(dev->stdout_text());
    CHECK(t.ok());
    CHECK(t.received == data.size());
    CHECK(t.received_sha256 == sha256_hex(data));
    CHECK(svc->wait_exit(k_fail_timeout) == 0);

    // The request as the device saw it: QoS 0, empty payload, the URL with its explicit port.
    const std::string out = dev->stdout_text();
    CHECK(contains(out, "\"event\":\"request\""));
    CHECK(contains(out, "\"url\":\"wss://" + r.host + "/bridges/"));
    CHECK(contains(out, "$url=wss%3A%2F%2F127.0.0.1%3A" + std::to_string(r.relay.port()) + "%2Fbridges%2F"));
    CHECK(contains(out, "\"qos\":0,\"payload_len\":0"));
    CHECK(contains(out, "\"event\":\"joined\""));
    CHECK(contains(out, "\"status\":101"));

    dev->kill(SIGKILL);
    dev->wait_exit(k_fail_timeout);
    CHECK(wait_until([&] { return device_state(r.relay, "mqtt-dev") == "Disconnected"; }, 10s, 100ms));
    CHECK(wait_until([&] { return metric(http_get(r.admin_address, "/metrics").body, "streamgate_devices_connected") == 0.0; }, 10s, 100ms));
}

TEST_CASE("mqtt: mosquitto_sub receives the stream request topic as IoT Hub sends it", "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("mosq-dev");
    const std::vector<std::string> argv = {
        "mosquitto_sub", "-h", "127.0.0.1", "-p", std::to_string(r.mqtt_port), "--cafile", r.relay.ca_file().string(),
        "-V", "mqttv311", "-i", "mosq-dev", "-u", r.host + "/mosq-dev/?api-version=2021-04-12", "-P",
        r.device_sas("mosq-dev"), "-t", "$iothub/streams/POST/#", "-v", "-C", "1", "-W", "30"};
    auto sub = r.relay.spawn("mosquitto_sub", argv);
    REQUIRE(wait_until([&] { return r.relay.device_connected("mosq-dev") || !sub->running(); }, k_connect_timeout));
    // mosquitto_sub cannot answer: it prints the request and leaves, so the POST learns the device went away.
    auto post = r.post_stream("mosq-dev", "ssh");
    INFO(post.line);
    CHECK(sub->wait_exit(k_fail_timeout) == 0);
    const std::string line = sub->stdout_text();
    INFO(line);
    CHECK(line.starts_with("$iothub/streams/POST/ssh/?$rid="));
    CHECK(contains(line, "&$url=wss%3A%2F%2F127.0.0.1%3A" + std::to_string(r.relay.port()) + "%2Fbridges%2F"));
    CHECK(contains(line, "&$auth="));
    CHECK((post.error_code() == 404104 || post.error_code() == 504101));
}

TEST_CASE("mqtt: a device that answers 400 rejects the stream, the service sees is-accepted False",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("rejecter");
    auto dev = r.device("mqtt-rejecter", "rejecter", {"--sas", r.device_sas("rejecter")}, {"--answer", "reject"});
    auto post = r.post_stream("rejecter");
    INFO(post.line);
    CHECK(post.status() == 200);
    CHECK(post.get("h.iothub-streaming-is-accepted") == "False");
    CHECK_FALSE(post.has("h.iothub-streaming-url"));
    CHECK(post.get("j.isAccepted") == "false");

    // Answered at QoS 1 with a reason in the payload: PUBACKed, the reason passed on.
    auto dev2 = r.device("mqtt-rejecter-2", "rejecter", {"--sas", r.device_sas("rejecter")},
                         {"--answer", "reject", "--answer-qos", "1", "--reject-payload", "busy"});
    auto post2 = r.post_stream("rejecter");
    INFO(post2.line);
    CHECK(post2.get("h.iothub-streaming-is-accepted") == "False");
    CHECK(post2.get("h.iothub-streaming-rejection-reason") == "busy");
}

TEST_CASE("mqtt: bad credentials and bad packets are refused cleanly beside a live stream that keeps its checksum",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("live");
    r.relay.create_device("other");
    r.relay.create_device("off");
    admin_ok(r.relay, {"device-identity", "update", "--device-id", "off", "--status", "disabled"});
    auto dev = r.device("mqtt-live", "live", {"--sas", r.device_sas("live")});
    unique_fd mine;
    auto svc = r.service("live", mine);
    steady_stream beside(mine.get());
    REQUIRE(beside.moves(k_connect_timeout));

    const std::string live_key = cs_field(device_connection_string(r.relay, "live"), "SharedAccessKey");
    const std::string wrong_key = cs_field(with_wrong_key(device_connection_string(r.relay, "live")), "SharedAccessKey");
    SECTION("credentials: CONNACK 5 not authorized, 2 identifier rejected, 4 bad user name") {
        CHECK(r.connack("live", {"--sas", sas_token(r.host + "/devices/live", wrong_key, "", unix_now() + 3600)}) == 5);
        CHECK(r.connack("live", {"--sas", r.device_sas("live", unix_now() - 3600)}) == 5);  // expired (beyond skew)
        CHECK(r.connack("off", {"--sas", r.device_sas("off")}) == 5);                        // disabled device
        CHECK(r.connack("nobody", {"--sas", sas_token(r.host + "/devices/nobody", live_key, "", unix_now() + 3600)}) == 5);
        CHECK(r.connack("live", {}) == 5);  // no password, no certificate
        // Another device's token for this client id: the scope does not cover it.
        CHECK(r.connack("other", {"--sas", r.device_sas("live")}) == 5);
        // The client id is not the device the user name names.
        CHECK(r.connack("live", {"--client-id", "other", "--sas", r.device_sas("live")}) == 2);
        CHECK(r.connack("live", {"--client-id", "bad/id", "--sas", r.device_sas("live")}) == 2);
        CHECK(r.connack("live", {"--user-device", "other", "--sas", r.device_sas("live")}) == 2);
        const std::string log = r.relay.relay().stderr_text();
        CHECK(contains(log, "event=AuthFailed"));
        CHECK(contains(log, "endpoint=mqtt connack=5"));
        CHECK_FALSE(contains(log, wrong_key));
    }
    SECTION("packets: malformed remaining length, oversized packet, SUBSCRIBE before CONNECT, garbage") {
        auto malformed = r.raw({"--hex", "10ffffffff01"});
        INFO(malformed.line);
        CHECK(malformed.get("closed") == "true");
        CHECK(malformed.get("received_hex").empty());  // no CONNACK for a broken CONNECT

        // A PUBLISH announcing 1 MiB after a good CONNECT: CONNACK 0, then the relay hangs up.
        auto oversized = r.raw({"--connect-device", "other", "--hex", "30808040", "--pad", "20000"},
                               {"--sas", r.device_sas("other")}, "other");
        INFO(oversized.line);
        CHECK(oversized.get("closed") == "true");
        CHECK(oversized.get("received_hex") == "20020000");

        const std::string filter = "$iothub/streams/POST/#";
        const std::string sub_body = u16(10) + u16(filter.size()) + filter + std::string(1, '\0');
        auto early = r.raw({"--hex", "82" + hex_of(std::string(1, static_cast<char>(sub_body.size()))) + hex_of(sub_body)});
        INFO(early.line);
        CHECK(early.get("closed") == "true");
        CHECK(early.get("received_hex").empty());

        auto garbage = r.raw({"--pad", "4096"});
        INFO(garbage.line);
        CHECK(garbage.get("closed") == "true");

        const std::string log = r.relay.relay().stderr_text();
        CHECK(contains(log, "remaining length longer than 4 bytes"));
        CHECK(contains(log, "exceeds the limit"));
        CHECK(contains(log, "SUBSCRIBE before CONNECT"));
    }
    CHECK(beside.moves());
    const std::string error = beside.finish();
    INFO(svc->describe());
    INFO(dev->stdout_text());
    CHECK(error.empty());
    CHECK(beside.rounds() > 0);
    CHECK(dev->running());  // the live device's own connection was never disturbed
    CHECK(r.relay.device_connected("live"));
    CHECK(r.relay.relay().running());
}

TEST_CASE("mqtt: keep-alive is honoured: silent past 1.5x keep-alive is dropped, a pinging device stays",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("ka");
    auto silent = r.raw({"--connect-device", "ka", "--wait", "10"}, {"--sas", r.device_sas("ka"), "--keepalive", "2"},
                        "ka");
    INFO(silent.line);
    CHECK(silent.get("received_hex") == "20020000");
    CHECK(silent.get("closed") == "true");
    CHECK(silent.real("after") >= 2.5);  // 1.5 x 2 s
    CHECK(silent.real("after") < 6.5);

    auto pinging = r.device("mqtt-ka", "ka", {"--sas", r.device_sas("ka"), "--keepalive", "2"});
    std::this_thread::sleep_for(7s);  // the property under test is time itself: over two 1.5x periods
    INFO(pinging->stdout_text());
    CHECK(pinging->running());
    CHECK_FALSE(contains(pinging->stdout_text(), "disconnected"));
    CHECK(r.relay.device_connected("ka"));
}

TEST_CASE("mqtt: a newer connection replaces the older, whichever protocol each used", "[integration][mqtt]") {
    mqtt_relay r;
    echo_server target;
    const std::string cs = r.relay.create_device("twice");
    auto first = r.device("mqtt-first", "twice", {"--sas", r.device_sas("twice")});
    auto second = r.device("mqtt-second", "twice", {"--sas", r.device_sas("twice")});
    CHECK(first->wait_exit(k_fail_timeout).has_value());
    CHECK(contains(first->stdout_text(), "\"event\":\"disconnected\""));
    CHECK(contains(r.relay.relay().stderr_text(), "event=DeviceReplaced device=twice"));
    CHECK(contains(r.relay.relay().stderr_text(), "old=mqtt new=mqtt"));

    // The control WebSocket (device proxy) replaces the MQTT device...
    auto proxy = spawn_device_proxy(r.relay, "device-proxy", cs, target.port());
    CHECK(second->wait_exit(k_connect_timeout).has_value());
    CHECK(wait_until([&] { return contains(r.relay.relay().stderr_text(), "old=mqtt new=websocket"); }, k_connect_timeout));
    // ...and an MQTT device replaces the control WebSocket, which is told 400027.
    auto third = r.device("mqtt-third", "twice", {"--sas", r.device_sas("twice")});
    CHECK(wait_until([&] { return contains(proxy->stderr_text(), "400027"); }, k_connect_timeout));
    proxy.reset();
    CHECK(contains(r.relay.relay().stderr_text(), "old=websocket new=mqtt"));
}

TEST_CASE("mqtt: over WebSockets at /$iothub/websocket on the main port: connect, stream request, echo",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("ws-dev");
    // Same script, --websocket: paho's own WebSocket transport (subprotocol "mqtt") to the main TLS port.
    auto argv_port = std::to_string(r.relay.port());
    auto p = r.relay.spawn("mqtt-ws-device",
                           {k_python, k_mqtt_device_script, "--port", argv_port, "--ca", r.relay.ca_file().string(),
                            "--host-name", r.host, "--device-id", "ws-dev", "--sas", r.device_sas("ws-dev"),
                            "--websocket", "device"});
    REQUIRE(wait_until([&] { return contains(p->stdout_text(), "\"event\":\"suback\"") || !p->running(); },
                       k_connect_timeout));
    INFO(p->stdout_text());
    CHECK(contains(p->stdout_text(), "\"granted\":\"0,0\""));
    CHECK(r.relay.device_connected("ws-dev"));

    unique_fd mine;
    auto svc = r.service("ws-dev", mine);
    const bytes data = random_bytes(256 * 1024);
    transfer_result t = transfer(mine.get(), data, {.receive_exactly = data.size(), .timeout = k_transfer_timeout});
    INFO(svc->describe());
    CHECK(t.ok());
    CHECK(t.received_sha256 == sha256_hex(data));

    // By hand: the subprotocol is echoed, a CONNECT split over two binary messages is CONNACK 0,
    // a text message closes the connection; without an upgrade the path is 400.
    const std::string connect = connect_packet_hex("ws-dev", r.host + "/ws-dev/?api-version=2021-04-12",
                                                   r.device_sas("ws-dev"));
    auto w = wire_script(r.relay, {step({{"op", "connect"}}),
                                   step({{"op", "upgrade"}, {"path", "/$iothub/websocket"},
                                         {"headers", std::vector<std::string>{"Sec-WebSocket-Protocol: mqtt"}}}),
                                   step({{"op", "ws_send"}, {"label", "half1"}, {"hex", connect.substr(0, 20)}}),
                                   step({{"op", "ws_send"}, {"label", "half2"}, {"hex", connect.substr(20)}}),
                                   step({{"op", "ws_recv"}, {"label", "connack"}}),
                                   step({{"op", "ws_send"}, {"label", "text"}, {"type", "text"}, {"data", "hello"}}),
                                   step({{"op", "wait_closed"}, {"label", "closed"}}),
                                   step({{"op", "connect"}, {"conn", "plain"}}),
                                   step({{"op", "request"}, {"conn", "plain"}, {"label", "get"},
                                         {"path", "/$iothub/websocket"}})});
    INFO(w.describe());
    CHECK(w.at("upgrade").status() == 101);
    CHECK(w.at("upgrade").get("h.sec-websocket-protocol") == "mqtt");
    CHECK(w.at("connack").get("opcode") == "binary");
    CHECK(w.at("connack").get("data_hex") == "20020000");
    CHECK(w.at("closed").event() == "closed");
    CHECK(w.at("get").status() == 400);
    CHECK(wait_until([&] { return contains(r.relay.relay().stderr_text(), "a text WebSocket frame"); }, 10s));

    // A bad SAS over WebSockets: CONNACK 5 too.
    auto events = run({k_python, k_mqtt_device_script, "--port", argv_port, "--ca", r.relay.ca_file().string(),
                       "--host-name", r.host, "--device-id", "ws-dev", "--sas",
                       r.device_sas("ws-dev", unix_now() - 3600), "--websocket", "connect"});
    INFO(events.out);
    CHECK(contains(events.out, "\"event\":\"connack\",\"rc\":5"));
}

TEST_CASE("mqtt: twin and method topics get a clean refusal, telemetry is dropped, the device stays",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("sdk-dev");
    auto dev = r.relay.spawn("mqtt-sdk-device",
                             r.client_argv("sdk-dev", {"--sas", r.device_sas("sdk-dev")}, "device",
                                           {"--also-subscribe", "$iothub/twin/res/#", "--also-subscribe",
                                            "$iothub/methods/POST/#", "--publish", "$iothub/twin/GET/?$rid=1",
                                            "--publish", "devices/sdk-dev/messages/events/"}));
    REQUIRE(wait_until([&] { return contains(dev->stdout_text(), "\"event\":\"suback\"") || !dev->running(); },
                       k_connect_timeout));
    INFO(dev->stdout_text());
    CHECK(contains(dev->stdout_text(), "\"granted\":\"0,0,128,128\""));
    CHECK(wait_until([&] { return occurrences(dev->stdout_text(), "\"event\":\"published\"") == 2; }, 10s));
    // Still connected, and streams still work.
    unique_fd mine;
    auto svc = r.service("sdk-dev", mine);
    const bytes data = random_bytes(64 * 1024);
    transfer_result t = transfer(mine.get(), data, {.receive_exactly = data.size(), .timeout = k_transfer_timeout});
    CHECK(t.ok());
    CHECK(t.received_sha256 == sha256_hex(data));
    CHECK(dev->running());
    CHECK(contains(r.relay.relay().stderr_text(), "event=MqttSubscribeRefused device=sdk-dev"));
    CHECK(contains(r.relay.relay().stderr_text(), "event=MqttPublishIgnored device=sdk-dev"));
}
