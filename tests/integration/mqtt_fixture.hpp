// Shared by the MQTT integration tests (test_mqtt.cpp, test_mqtt_access.cpp): a relay with
// --mqtt-listen, mqtt_device.py (Debian's python3-paho-mqtt, or hand-made packets) as the device,
// the real service proxy as the service side.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <sstream>
#include <thread>

#include "admin_http_client.hpp"
#include "harness.hpp"
#include "wire.hpp"

namespace sgit {

inline const std::string k_mqtt_device_script = std::filesystem::path(SG_WIRE_CLIENT).parent_path() / "mqtt_device.py";
// Debian's interpreter, where python3-paho-mqtt is installed (a python3 earlier in PATH, pyenv's
// say, would not see it).
inline const std::string k_python = std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";

// A relay with --mqtt-listen on a free port and its admin listener on another.
struct mqtt_relay {
    relay_fixture relay{relay_config{{"--mqtt-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}}};
    int mqtt_port = 0;
    std::string admin_address;
    std::string host;

    mqtt_relay() {
        const std::string address = wait_listening_address(relay.relay(), "event=Listening endpoint=mqtt");
        INFO(relay.relay().describe());
        REQUIRE_FALSE(address.empty());
        mqtt_port = std::stoi(address.substr(address.rfind(':') + 1));
        admin_address = wait_listening_address(relay.relay(), "event=AdminListening");
        host = relay_host(relay);
    }

    // A device SAS token as the IoT SDKs make it: sr={host}/devices/{id}, signed with the device key.
    std::string device_sas(const std::string& id, long long expiry = unix_now() + 3600) {
        const std::string key = cs_field(device_connection_string(relay, id), "SharedAccessKey");
        return sas_token(host + "/devices/" + id, key, "", expiry);
    }

    std::vector<std::string> client_argv(const std::string& id, const std::vector<std::string>& options,
                                         const std::string& command, const std::vector<std::string>& command_args) {
        std::vector<std::string> argv = {k_python, k_mqtt_device_script, "--port", std::to_string(mqtt_port),
                                         "--ca", relay.ca_file().string(), "--host-name", host, "--device-id", id};
        argv.insert(argv.end(), options.begin(), options.end());
        argv.push_back(command);
        argv.insert(argv.end(), command_args.begin(), command_args.end());
        return argv;
    }

    // A paho device that subscribes and answers stream requests; waits for its SUBACK.
    std::unique_ptr<process> device(const std::string& name, const std::string& id, std::vector<std::string> options,
                                    const std::vector<std::string>& device_args = {}) {
        auto p = relay.spawn(name, client_argv(id, options, "device", device_args));
        bool subscribed = wait_until([&] { return contains(p->stdout_text(), "\"event\":\"suback\"") || !p->running(); },
                                     k_connect_timeout);
        INFO(p->describe());
        INFO(p->stdout_text());
        REQUIRE(subscribed);
        REQUIRE(contains(p->stdout_text(), "\"granted\":\"0,0"));
        return p;
    }

    // Runs mqtt_device.py to completion: its events.
    std::vector<wire_event> run_client(const std::string& id, const std::vector<std::string>& options,
                                       const std::string& command, const std::vector<std::string>& command_args) {
        auto argv = client_argv(id, options, command, command_args);
        run_result r = run(argv, {}, k_command_timeout);
        INFO(describe(argv, r));
        CHECK(r.exit_code == 0);
        std::vector<wire_event> events;
        std::istringstream lines(r.out);
        std::string line;
        while (std::getline(lines, line)) {
            wire_event e;
            e.line = line;
            if (wire_detail::parse_flat_json(line, e.fields)) events.push_back(std::move(e));
        }
        return events;
    }

    // The CONNACK return code a connect attempt got (-1: none).
    long long connack(const std::string& id, const std::vector<std::string>& options) {
        auto events = run_client(id, options, "connect", {"--wait", "10"});
        for (const auto& e : events)
            if (e.event() == "connack") return e.num("rc");
        return -1;
    }

    // Hand-made bytes on a fresh TLS connection: what came back and whether the relay closed.
    wire_event raw(const std::vector<std::string>& raw_args, const std::vector<std::string>& options = {},
                   const std::string& id = "raw") {
        auto events = run_client(id, options, "raw", raw_args);
        REQUIRE(events.size() == 1);
        return events[0];
    }

    // A service connection: a --stdio service proxy whose stdin/stdout is `mine`.
    std::unique_ptr<process> service(const std::string& id, unique_fd& mine) {
        auto [a, b] = socket_pair();
        auto svc = spawn_stdio_service_proxy(relay, relay.service_connection_string(), id, b.get());
        mine = std::move(a);
        return svc;
    }

    // POST /twins/{id}/streams/{name} through REST: the response's event.
    wire_event post_stream(const std::string& id, const std::string& name = "TestStream") {
        const std::string token = sas_token(host, policy_key(relay, "service"), "service", unix_now() + 3600);
        auto w = wire_script(relay, {step({{"op", "connect"}}),
                                     step({{"op", "request"}, {"label", "post"}, {"method", "POST"},
                                           {"path", "/twins/" + id + "/streams/" + name + "?api-version=2020-09-30"},
                                           {"headers", std::vector<std::string>{"Authorization: " + token,
                                                                                "iothub-streaming-response-timeout-in-seconds: 10"}},
                                           {"timeout", 20}})});
        INFO(w.describe());
        return w.at("post");
    }

    std::string rest_connection_state(const std::string& id) {
        const std::string token = sas_token(host, policy_key(relay, "registryRead"), "registryRead", unix_now() + 3600);
        auto w = wire_script(relay, {step({{"op", "connect"}}),
                                     step({{"op", "request"}, {"label", "get"}, {"path", "/devices/" + id},
                                           {"headers", std::vector<std::string>{"Authorization: " + token}}})});
        INFO(w.describe());
        return w.at("get").get("j.connectionState");
    }
};

inline std::string hex_of(const std::string& s) { return to_hex_string(s); }
inline std::string u16(std::size_t n) { return std::string{static_cast<char>(n >> 8), static_cast<char>(n & 0xff)}; }
// A CONNECT packet (MQTT 3.1.1, clean session, user name and password), as hex.
inline std::string connect_packet_hex(const std::string& client_id, const std::string& user, const std::string& password,
                                      int keep_alive = 60) {
    const std::string body = u16(4) + "MQTT" + std::string{4, static_cast<char>(0xC2)} + u16(keep_alive) +
                             u16(client_id.size()) + client_id + u16(user.size()) + user + u16(password.size()) + password;
    std::string length;
    for (std::size_t n = body.size();;) {
        const unsigned char digit = n % 128;
        n /= 128;
        length += static_cast<char>(digit | (n ? 0x80 : 0));
        if (!n) break;
    }
    return hex_of("\x10" + length + body);
}

// Round trips of 64 KiB through a stream until stopped, every one checked: the stream beside.
class steady_stream {
public:
    explicit steady_stream(int fd) : fd_(fd) {
        thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
    }
    ~steady_stream() { thread_.request_stop(); }
    bool moves(millis timeout = 10s) const {
        const std::size_t now = rounds_;
        return wait_until([&] { return rounds_ > now || failed_; }, timeout, 5ms) && !failed_;
    }
    // Stops the loop, then a last chunk with our write side shut down must come back, then EOF.
    std::string finish() {
        thread_.request_stop();
        thread_.join();
        if (failed_) return error_;
        const bytes last = random_bytes(100 * 1000);
        transfer_result r = transfer(fd_, last, {.shutdown_after_send = true, .timeout = k_transfer_timeout});
        if (!r.ok()) return "last chunk: " + r.error;
        if (r.received_sha256 != sha256_hex(last)) return "last chunk came back different";
        return {};
    }
    std::size_t rounds() const { return rounds_; }

private:
    void loop(std::stop_token stop) {
        bytes chunk = random_bytes(64 * 1024);
        while (!stop.stop_requested()) {
            std::rotate(chunk.begin(), chunk.begin() + 1 + (rounds_ % 97), chunk.end());
            transfer_result r = transfer(fd_, chunk, {.receive_exactly = chunk.size(), .timeout = 20s});
            if (!r.ok() || r.received_sha256 != sha256_hex(chunk)) {
                error_ = !r.ok() ? r.error : "round " + std::to_string(rounds_.load()) + " came back different";
                failed_ = true;
                return;
            }
            ++rounds_;
            std::this_thread::sleep_for(5ms);
        }
    }
    int fd_;
    std::atomic<std::size_t> rounds_{0};
    std::atomic<bool> failed_{false};
    std::string error_;
    std::jthread thread_;
};


}  // namespace sgit
