#include <catch2/catch.hpp>

#include "common/connection_string.hpp"

#include <string>

namespace {

// 32 bytes, with '=' padding, so splitting on every '=' would break it.
const std::string key = "c3RyZWFtZ2F0ZS10ZXN0LWtleS0wMTIzNDU2Nzg5YWI=";

// The message of the config_error thrown for text; fails the test when nothing is thrown.
std::string error_of(const std::string& text) {
    try {
        sg::parse_connection_string(text);
    } catch (const sg::config_error& e) {
        return e.what();
    }
    FAIL("no config_error for: " << text);
    return {};
}

// Asserts a config_error mentioning `expected` and never the key (or its body without padding).
void check_error(const std::string& text, const std::string& expected) {
    INFO("connection string: " << text);
    std::string msg = error_of(text);
    INFO("message: " << msg);
    CHECK(msg.find(expected) != std::string::npos);
    CHECK(msg.find(key.substr(0, 20)) == std::string::npos);
}

} // namespace

TEST_CASE("device connection string", "[connection_string]") {
    auto cs = sg::parse_connection_string("HostName=myhub.example;DeviceId=dev1;SharedAccessKey=" + key);
    CHECK(cs.host_name == "myhub.example");
    CHECK(cs.device_id == "dev1");
    CHECK(cs.shared_access_key_name.empty());
    CHECK(cs.shared_access_key == key);
    CHECK_FALSE(cs.x509);
    CHECK(cs.is_device());
    CHECK(cs.host() == "myhub.example");
    CHECK(cs.port() == 443);
}

TEST_CASE("service connection string", "[connection_string]") {
    auto cs = sg::parse_connection_string("HostName=myhub.example:8443;SharedAccessKeyName=service;SharedAccessKey=" + key);
    CHECK(cs.host_name == "myhub.example:8443");
    CHECK(cs.device_id.empty());
    CHECK(cs.shared_access_key_name == "service");
    CHECK(cs.shared_access_key == key);
    CHECK_FALSE(cs.is_device());
    CHECK(cs.host() == "myhub.example");
    CHECK(cs.port() == 8443);
}

TEST_CASE("x509 device connection string needs no key", "[connection_string]") {
    auto cs = sg::parse_connection_string("HostName=h;DeviceId=dev1;x509=true");
    CHECK(cs.x509);
    CHECK(cs.shared_access_key.empty());
    CHECK(sg::parse_connection_string("HostName=h;DeviceId=dev1;X509=TRUE").x509);
    auto with_key = sg::parse_connection_string("HostName=h;DeviceId=dev1;SharedAccessKey=" + key + ";x509=true");
    CHECK(with_key.x509);
    CHECK(with_key.shared_access_key == key);
    CHECK_FALSE(sg::parse_connection_string("HostName=h;DeviceId=d;SharedAccessKey=" + key + ";x509=false").x509);
}

TEST_CASE("keys are case-insensitive, values kept, order free, blanks tolerated", "[connection_string]") {
    auto cs = sg::parse_connection_string("  sharedaccesskey=" + key + " ; DEVICEID=Dev-1 ;;hostname=MyHub.Example;  ");
    CHECK(cs.host_name == "MyHub.Example");
    CHECK(cs.device_id == "Dev-1");
    CHECK(cs.shared_access_key == key);
    auto svc = sg::parse_connection_string("SHAREDACCESSKEYNAME=IoTHubOwner;HostName=h;SharedAccessKey=" + key + ";");
    CHECK(svc.shared_access_key_name == "IoTHubOwner");
    // A device id may itself contain '=': only the first '=' separates.
    CHECK(sg::parse_connection_string("HostName=h;DeviceId=a=b;SharedAccessKey=" + key).device_id == "a=b");
}

TEST_CASE("host and port", "[connection_string]") {
    auto host_of = [](const std::string& h) {
        return sg::parse_connection_string("HostName=" + h + ";DeviceId=d;x509=true");
    };
    CHECK(host_of("localhost").host() == "localhost");
    CHECK(host_of("localhost").port() == 443);
    CHECK(host_of("10.0.0.1:1").port() == 1);
    CHECK(host_of("10.0.0.1:65535").port() == 65535);
    CHECK(host_of("10.0.0.1:65535").host() == "10.0.0.1");
    CHECK(host_of("[::1]:8443").host() == "::1");
    CHECK(host_of("[::1]:8443").port() == 8443);
    CHECK(host_of("[fe80::1]").host() == "fe80::1");
    CHECK(host_of("[fe80::1]").port() == 443);
    CHECK(host_of("relay_1.lan").host() == "relay_1.lan");
}

TEST_CASE("to_string is canonical and round-trips", "[connection_string]") {
    const std::string device = "HostName=myhub.example:8443;DeviceId=dev1;SharedAccessKey=" + key;
    const std::string service = "HostName=myhub.example;SharedAccessKeyName=service;SharedAccessKey=" + key;
    const std::string x509 = "HostName=[::1]:8443;DeviceId=dev+1;x509=true";
    const std::string both = "HostName=h;DeviceId=d;SharedAccessKey=" + key + ";x509=true";
    for (const auto& text : {device, service, x509, both}) {
        INFO(text);
        auto cs = sg::parse_connection_string(text);
        CHECK(cs.to_string() == text);
        auto again = sg::parse_connection_string(cs.to_string());
        CHECK(again.host_name == cs.host_name);
        CHECK(again.device_id == cs.device_id);
        CHECK(again.shared_access_key_name == cs.shared_access_key_name);
        CHECK(again.shared_access_key == cs.shared_access_key);
        CHECK(again.x509 == cs.x509);
    }
    // Any spelling comes back in canonical order and case.
    CHECK(sg::parse_connection_string(" sharedaccesskey=" + key + ";deviceid=dev1;hostname=myhub.example:8443;")
              .to_string() == device);
    CHECK(sg::parse_connection_string("HostName=h;DeviceId=d;SharedAccessKey=" + key + ";x509=false").to_string() ==
          "HostName=h;DeviceId=d;SharedAccessKey=" + key);
}

TEST_CASE("connection string errors name the problem, never the key", "[connection_string]") {
    const std::string k = ";SharedAccessKey=" + key;
    check_error("", "missing HostName");
    check_error("DeviceId=d" + k, "missing HostName");
    check_error("HostName=h" + k, "needs DeviceId");
    check_error("HostName=h;DeviceId=d;SharedAccessKeyName=p" + k, "both DeviceId and SharedAccessKeyName");
    check_error("HostName=h;DeviceId=d", "missing SharedAccessKey");
    check_error("HostName=h;SharedAccessKeyName=p", "missing SharedAccessKey");
    check_error("HostName=h;DeviceId=d;x509=false", "missing SharedAccessKey");
    check_error("HostName=h;DeviceId=d;SharedAccessKey=" + key.substr(0, 43), "not valid base64");
    check_error("HostName=h;DeviceId=d;SharedAccessKey=" + key.substr(0, 40) + "!!!=", "not valid base64");
    check_error("HostName=h;DeviceId=d;SharedAccessKey=" + key + "x", "not valid base64");
    check_error("HostName=h;DeviceId=d" + k + ";ModuleId=m", "unknown key in part 4");
    check_error("HostName=h;DeviceId=d" + k + ";GatewayHostName=g", "unknown key");
    // A key pasted as its own part must not be echoed back as an "unknown key" name.
    check_error("HostName=h;DeviceId=d;" + key, "unknown key in part 3");
    check_error("HostName=h;DeviceId=d;" + key.substr(0, 43), "part 3 has no '='");
    check_error("HostName=h;HostName=h;DeviceId=d" + k, "duplicate HostName");
    check_error("HostName=h;DeviceId=d;deviceid=e" + k, "duplicate DeviceId");
    check_error("HostName=h;DeviceId=d" + k + k, "duplicate SharedAccessKey");
    check_error("HostName=h;SharedAccessKeyName=a;SharedAccessKeyName=b" + k, "duplicate SharedAccessKeyName");
    check_error("HostName=h;DeviceId=d;x509=true;x509=true", "duplicate x509");
    check_error("HostName=;DeviceId=d" + k, "HostName is empty");
    check_error("HostName=h;DeviceId=" + k, "DeviceId is empty");
    check_error("HostName=h;DeviceId=d;SharedAccessKey=", "SharedAccessKey is empty");
    check_error("HostName=h;DeviceId=a/b" + k, "DeviceId is not a valid device id");
    check_error("HostName=h;DeviceId=.." + k, "DeviceId is not a valid device id");
    check_error("HostName=h;DeviceId=" + std::string(129, 'd') + k, "DeviceId is not a valid device id");
    check_error("HostName=h;DeviceId=d;x509=yes", "x509 must be true or false");
    check_error("HostName=h;SharedAccessKeyName=p;x509=true", "only for device");
}

TEST_CASE("connection string host errors", "[connection_string]") {
    const std::string rest = ";DeviceId=d;SharedAccessKey=" + key;
    check_error("HostName=h:0" + rest, "invalid port");
    check_error("HostName=h:65536" + rest, "invalid port");
    check_error("HostName=h:99999999999" + rest, "invalid port");
    check_error("HostName=h:" + rest, "invalid port");
    check_error("HostName=h:8a" + rest, "invalid port");
    check_error("HostName=h:-1" + rest, "invalid port");
    check_error("HostName=[::1]:x" + rest, "invalid port");
    check_error("HostName=https://h" + rest, "not a host name");
    check_error("HostName=h/path" + rest, "not a host name");
    check_error("HostName=::1" + rest, "not a host name");
    check_error("HostName=[::1" + rest, "not a host name");
    check_error("HostName=[]:443" + rest, "not a host name");
    check_error("HostName=[::1]8443" + rest, "not a host name");
    check_error("HostName=:443" + rest, "not a host name");
    check_error("HostName=user@h" + rest, "not a host name");
}

TEST_CASE("parse errors are config_error", "[connection_string]") {
    CHECK_THROWS_AS(sg::parse_connection_string("nonsense"), sg::config_error);
    CHECK_NOTHROW(sg::parse_connection_string("HostName=h;DeviceId=d;SharedAccessKey=" + key));
}
