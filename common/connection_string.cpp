#include "common/connection_string.hpp"

#include "common/crypto.hpp"
#include "common/device_id.hpp"

#include <optional>

namespace sg {

namespace {

struct host_port {
    std::string host;
    std::uint16_t port = 443;
};

std::string_view trim(std::string_view s) {
    const char* ws = " \t\r\n";
    auto b = s.find_first_not_of(ws);
    if (b == std::string_view::npos) return {};
    auto e = s.find_last_not_of(ws);
    return s.substr(b, e - b + 1);
}

std::optional<std::uint16_t> parse_port(std::string_view s) {
    if (s.empty() || s.size() > 5) return std::nullopt;
    unsigned v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(v);
}

bool host_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

bool ipv6_char(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

// "name", "name:port", "[v6]" or "[v6]:port". Bare IPv6 without brackets is refused because
// its last group could not be told apart from a port.
std::optional<host_port> split_host_port(std::string_view text, const char** why = nullptr) {
    const char* ignored = nullptr;
    if (!why) why = &ignored;
    *why = "HostName is not a host name (no scheme, path or unbracketed IPv6)";
    if (text.find_first_of("/@") != std::string_view::npos) return std::nullopt; // a URL, not a host
    host_port out;
    std::string_view rest;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close == 1) return std::nullopt;
        std::string_view inside = text.substr(1, close - 1);
        for (char c : inside)
            if (!ipv6_char(c)) return std::nullopt;
        out.host = std::string(inside);
        rest = text.substr(close + 1);
    } else {
        auto colon = text.find(':');
        std::string_view name = text.substr(0, colon);
        if (name.empty()) return std::nullopt;
        for (char c : name)
            if (!host_char(c)) return std::nullopt;
        out.host = std::string(name);
        rest = colon == std::string_view::npos ? std::string_view{} : text.substr(colon);
    }
    if (!rest.empty()) {
        if (rest.front() != ':') return std::nullopt;
        *why = "HostName has an invalid port (expected 1..65535)";
        auto port = parse_port(rest.substr(1));
        if (!port) return std::nullopt;
        out.port = *port;
    }
    return out;
}

[[noreturn]] void fail(const std::string& what) { throw config_error("connection string: " + what); }

} // namespace

std::string connection_string::host() const {
    auto hp = split_host_port(host_name);
    return hp ? hp->host : host_name;
}

std::uint16_t connection_string::port() const {
    auto hp = split_host_port(host_name);
    return hp ? hp->port : 443;
}

std::string connection_string::to_string() const {
    std::string s = "HostName=" + host_name;
    if (is_device()) {
        s += ";DeviceId=" + device_id;
        if (!shared_access_key.empty()) s += ";SharedAccessKey=" + shared_access_key;
        if (x509) s += ";x509=true";
    } else {
        s += ";SharedAccessKeyName=" + shared_access_key_name + ";SharedAccessKey=" + shared_access_key;
    }
    return s;
}

connection_string parse_connection_string(std::string_view text) {
    // Known keys in canonical spelling; matching is case-insensitive.
    static const char* const names[] = {"HostName", "DeviceId", "SharedAccessKeyName", "SharedAccessKey", "x509"};
    std::optional<std::string> values[5];

    std::size_t part_no = 0;
    for (std::size_t start = 0; start <= text.size();) {
        auto semi = text.find(';', start);
        if (semi == std::string_view::npos) semi = text.size();
        std::string_view part = trim(text.substr(start, semi - start));
        start = semi + 1;
        ++part_no;
        if (part.empty()) continue; // "a=1;;b=2;" is tolerated
        // Messages name the part by position, never by content: a stray fragment may be key material.
        auto eq = part.find('=');
        if (eq == std::string_view::npos) fail("part " + std::to_string(part_no) + " has no '='");
        std::string key = to_lower(trim(part.substr(0, eq)));
        std::string_view value = trim(part.substr(eq + 1));

        std::size_t i = 0;
        while (i < 5 && to_lower(names[i]) != key) ++i;
        if (i == 5)
            fail("unknown key in part " + std::to_string(part_no) +
                 " (expected HostName, DeviceId, SharedAccessKeyName, SharedAccessKey or x509)");
        if (values[i]) fail(std::string("duplicate ") + names[i]);
        if (value.empty()) fail(std::string(names[i]) + " is empty");
        values[i] = std::string(value);
    }

    auto& [host, device, key_name, key, x509] = values;
    connection_string cs;
    if (!host) fail("missing HostName");
    const char* why = nullptr;
    if (!split_host_port(*host, &why)) fail(why);
    cs.host_name = *host;

    if (device && key_name) fail("has both DeviceId and SharedAccessKeyName");
    if (!device && !key_name) fail("needs DeviceId (device) or SharedAccessKeyName (service)");
    if (device) {
        if (!is_valid_device_id(*device)) fail("DeviceId is not a valid device id");
        cs.device_id = *device;
    } else {
        cs.shared_access_key_name = *key_name;
    }

    if (x509) {
        std::string v = to_lower(*x509);
        if (v != "true" && v != "false") fail("x509 must be true or false");
        cs.x509 = v == "true";
        if (cs.x509 && !device) fail("x509=true is only for device connection strings");
    }
    if (key) {
        if (!base64_decode(*key)) fail("SharedAccessKey is not valid base64");
        cs.shared_access_key = *key;
    } else if (!cs.x509) {
        fail("missing SharedAccessKey");
    }
    return cs;
}

} // namespace sg
