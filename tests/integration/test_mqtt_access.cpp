// The MQTT endpoint (issue 14), who gets in: X.509 devices, revocation of a live connection,
// --max-devices, and the listener being off by default and configurable from a file.
#include "mqtt_fixture.hpp"

using namespace sgit;

TEST_CASE("mqtt: an X.509 device connects with its certificate and no password, a stranger's certificate is CONNACK 5",
          "[integration][mqtt]") {
    mqtt_relay r;
    const cert_files mine = make_self_signed(r.relay.dir().path(), "mqtt-x509", "mqtt-x509");
    const cert_files stranger = make_self_signed(r.relay.dir().path(), "mqtt-x509-stranger", "mqtt-x509");
    const std::string thumbprint = admin_ok(r.relay, {"certificate", "thumbprint", "--path", mine.cert.string()});
    admin_ok(r.relay, {"device-identity", "create", "--device-id", "mqtt-x509", "--auth-method", "x509_thumbprint",
                       "--primary-thumbprint", thumbprint});

    CHECK(r.connack("mqtt-x509", {"--cert", stranger.cert.string(), "--key", stranger.key.string()}) == 5);
    CHECK(r.connack("mqtt-x509", {}) == 5);  // neither password nor certificate
    auto dev = r.device("mqtt-x509-device", "mqtt-x509", {"--cert", mine.cert.string(), "--key", mine.key.string()});
    CHECK(contains(r.relay.relay().stderr_text(), "event=DeviceConnected device=mqtt-x509"));
    CHECK(contains(r.relay.relay().stderr_text(), "auth=x509 protocol=mqtt"));

    unique_fd fd;
    auto svc = r.service("mqtt-x509", fd);
    const bytes data = random_bytes(128 * 1024);
    transfer_result t = transfer(fd.get(), data, {.receive_exactly = data.size(), .timeout = k_transfer_timeout});
    INFO(svc->describe());
    CHECK(t.ok());
    CHECK(t.received_sha256 == sha256_hex(data));
}

TEST_CASE("mqtt: disabling a connected MQTT device cuts its connection, as for the control WebSocket",
          "[integration][mqtt]") {
    mqtt_relay r;
    r.relay.create_device("revoked");
    auto dev = r.device("mqtt-revoked", "revoked", {"--sas", r.device_sas("revoked")});
    admin_ok(r.relay, {"device-identity", "update", "--device-id", "revoked", "--status", "disabled"});
    CHECK(dev->wait_exit(k_fail_timeout).has_value());
    INFO(dev->stdout_text());
    CHECK(contains(dev->stdout_text(), "\"event\":\"disconnected\""));
    const std::string log = r.relay.relay().stderr_text();
    CHECK(contains(log, "event=DeviceRevoked device=revoked"));
    CHECK(contains(log, "401003 IoTHubUnauthorized: device was disabled"));
    CHECK(wait_until([&] { return device_state(r.relay, "revoked") == "Disconnected"; }, 10s, 100ms));
    // And it cannot come back: CONNACK 5.
    CHECK(r.connack("revoked", {"--sas", r.device_sas("revoked")}) == 5);
}

TEST_CASE("mqtt: the TLS listener is off by default and on from a config file's mqtt-listen", "[integration][mqtt]") {
    {
        relay_fixture plain;
        CHECK_FALSE(contains(plain.relay().stderr_text(), "endpoint=mqtt"));
    }
    temp_dir config_dir;
    const std::string text = "mqtt-listen = \"127.0.0.1:0\"\n";
    write_file(config_dir / "relay.toml", std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(text.data()), text.size()));
    relay_fixture relay{relay_config{{"--config", (config_dir / "relay.toml").string()}}};
    const std::string address = wait_listening_address(relay.relay(), "event=Listening endpoint=mqtt");
    INFO(relay.relay().describe());
    REQUIRE_FALSE(address.empty());
    CHECK(wait_for_port(std::stoi(address.substr(address.rfind(':') + 1))));
}

TEST_CASE("mqtt: a full relay (--max-devices) answers CONNACK 3, and a device replacing itself still gets in",
          "[integration][mqtt]") {
    relay_fixture relay{relay_config{{"--mqtt-listen", "127.0.0.1:0", "--admin-listen", "off", "--max-devices", "1"}}};
    const std::string address = wait_listening_address(relay.relay(), "event=Listening endpoint=mqtt");
    REQUIRE_FALSE(address.empty());
    const std::string port = address.substr(address.rfind(':') + 1);
    const std::string host = relay_host(relay);
    auto sas_for = [&](const std::string& id) {
        return sas_token(host + "/devices/" + id, cs_field(relay.create_device(id), "SharedAccessKey"), "", unix_now() + 3600);
    };
    const std::string first_sas = sas_for("first");
    const std::string second_sas = sas_for("second");
    auto argv = [&](const std::string& id, const std::string& sas, const std::string& command) {
        return std::vector<std::string>{k_python, k_mqtt_device_script, "--port", port, "--ca", relay.ca_file().string(),
                                        "--host-name", host, "--device-id", id, "--sas", sas, command};
    };
    auto first = relay.spawn("mqtt-first", argv("first", first_sas, "device"));
    REQUIRE(wait_until([&] { return contains(first->stdout_text(), "\"event\":\"suback\"") || !first->running(); },
                       k_connect_timeout));
    run_result other = run(argv("second", second_sas, "connect"));
    INFO(other.out);
    CHECK(contains(other.out, "\"event\":\"connack\",\"rc\":3"));
    CHECK(contains(relay.relay().stderr_text(), "event=LimitHit limit=controlConnections device=second"));
    run_result again = run(argv("first", first_sas, "connect"));  // replaces "first": the count stays 1
    INFO(again.out);
    CHECK(contains(again.out, "\"event\":\"connack\",\"rc\":0"));
}
