// Helpers for the security, limits and bad-input integration tests (header-only, so the shared
// harness files stay untouched):
//   - `wire(...)` runs wire_client.py, a raw TLS/HTTP/WebSocket client in Python that sends what
//     the product's own clients never would, and parses the flat JSON events it prints;
//   - a tiny JSON builder for its scripts;
//   - SAS tokens made the way the seeds define them (HMAC-SHA256 with OpenSSL), so a test can
//     make expired, mis-scoped or malformed ones;
//   - admin shortcuts (keys, connection strings, device state) and OpenSSL CLI certificates.
#pragma once

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "harness.hpp"

namespace sgit {

// ---------------------------------------------------------------------------------------------
// JSON text for wire_client.py scripts.

inline std::string json_quote(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out += buf;
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    return out + "\"";
}

// A JSON value: string, integer, boolean or list of strings.
struct jv {
    std::string text;
    jv(const char* s) : text(json_quote(s)) {}
    jv(const std::string& s) : text(json_quote(s)) {}
    jv(int n) : text(std::to_string(n)) {}
    jv(long n) : text(std::to_string(n)) {}
    jv(long long n) : text(std::to_string(n)) {}
    jv(std::size_t n) : text(std::to_string(n)) {}
    jv(double d) : text(std::to_string(d)) {}
    jv(bool b) : text(b ? "true" : "false") {}
    jv(const std::vector<std::string>& list) {
        text = "[";
        for (std::size_t i = 0; i < list.size(); ++i) text += (i ? "," : "") + json_quote(list[i]);
        text += "]";
    }
};

// {"k": v, ...}: one step of a wire_client.py script.
inline std::string step(std::initializer_list<std::pair<const char*, jv>> fields) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, v] : fields) {
        out += (first ? "" : ",") + json_quote(k) + ":" + v.text;
        first = false;
    }
    return out + "}";
}

inline std::string json_list(const std::vector<std::string>& items) {
    std::string out = "[";
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + items[i];
    return out + "]";
}

// ---------------------------------------------------------------------------------------------
// wire_client.py events: flat JSON objects, one a line.

struct wire_event {
    std::string line;
    std::map<std::string, std::string> fields;  // strings unquoted; numbers, booleans, null as text

    bool has(const std::string& k) const { return fields.count(k) != 0; }
    std::string get(const std::string& k) const {
        auto it = fields.find(k);
        return it == fields.end() ? std::string() : it->second;
    }
    std::string event() const { return get("event"); }
    long long num(const std::string& k) const {
        auto it = fields.find(k);
        if (it == fields.end()) return -1;
        try {
            return std::stoll(it->second);
        } catch (...) {
            return -1;
        }
    }
    double real(const std::string& k) const {
        auto it = fields.find(k);
        if (it == fields.end()) return -1;
        try {
            return std::stod(it->second);
        } catch (...) {
            return -1;
        }
    }
    int status() const { return static_cast<int>(num("status")); }
    long long error_code() const { return num("j.errorCode"); }
};

namespace wire_detail {
inline void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// Parses {"k": scalar, ...}; false on anything else.
inline bool parse_flat_json(const std::string& s, std::map<std::string, std::string>& out) {
    std::size_t i = 0;
    auto ws = [&] {
        while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n')) ++i;
    };
    auto str = [&](std::string& v) {
        if (i >= s.size() || s[i] != '"') return false;
        ++i;
        while (i < s.size() && s[i] != '"') {
            if (s[i] == '\\' && i + 1 < s.size()) {
                char e = s[i + 1];
                i += 2;
                switch (e) {
                case 'n': v += '\n'; break;
                case 'r': v += '\r'; break;
                case 't': v += '\t'; break;
                case 'b': v += '\b'; break;
                case 'f': v += '\f'; break;
                case 'u':
                    if (i + 4 > s.size()) return false;
                    append_utf8(v, static_cast<unsigned>(std::stoul(s.substr(i, 4), nullptr, 16)));
                    i += 4;
                    break;
                default: v += e;
                }
            } else {
                v += s[i++];
            }
        }
        if (i >= s.size()) return false;
        ++i;
        return true;
    };
    ws();
    if (i >= s.size() || s[i] != '{') return false;
    ++i;
    for (;;) {
        ws();
        if (i < s.size() && s[i] == '}') return true;
        std::string k, v;
        if (!str(k)) return false;
        ws();
        if (i >= s.size() || s[i] != ':') return false;
        ++i;
        ws();
        if (i < s.size() && s[i] == '"') {
            if (!str(v)) return false;
        } else {
            while (i < s.size() && s[i] != ',' && s[i] != '}') v += s[i++];
            while (!v.empty() && v.back() == ' ') v.pop_back();
        }
        out[k] = v;
        ws();
        if (i < s.size() && s[i] == ',') {
            ++i;
            continue;
        }
        if (i < s.size() && s[i] == '}') return true;
        return false;
    }
}
}  // namespace wire_detail

struct wire_result {
    std::string command;
    run_result raw;
    std::vector<wire_event> events;

    // The first event with `label` (an empty event if there is none).
    const wire_event& at(const std::string& label) const {
        static const wire_event none;
        for (const auto& e : events)
            if (e.get("label") == label) return e;
        return none;
    }
    std::string describe() const { return sgit::describe({command}, raw); }
};

inline std::filesystem::path wire_client_script() {
    return SG_WIRE_CLIENT; // absolute, from CMake: __FILE__ is relative under ccache's base_dir
}

// Runs `python3 wire_client.py --port P --ca CA <args…>` against the relay.
inline wire_result wire(const relay_fixture& relay, const std::vector<std::string>& args,
                        millis timeout = k_command_timeout) {
    std::vector<std::string> argv = {"python3", wire_client_script().string(), "--port",
                                     std::to_string(relay.port()), "--ca", relay.ca_file().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    wire_result w;
    for (const auto& a : argv) w.command += (w.command.empty() ? "" : " ") + (a.size() > 300 ? a.substr(0, 300) + "…" : a);
    w.raw = run(argv, {}, timeout);
    std::istringstream lines(w.raw.out);
    std::string line;
    while (std::getline(lines, line)) {
        wire_event e;
        e.line = line;
        if (wire_detail::parse_flat_json(line, e.fields)) w.events.push_back(std::move(e));
    }
    return w;
}

// Runs a script (a list of steps).
inline wire_result wire_script(const relay_fixture& relay, const std::vector<std::string>& steps,
                               millis timeout = k_command_timeout) {
    return wire(relay, {"script", json_list(steps)}, timeout);
}

// ---------------------------------------------------------------------------------------------
// SAS tokens (access-control-and-sas-tokens seed): sig = base64(HMAC-SHA256(base64decode(key),
// sr-as-sent + "\n" + se-as-sent)).

inline std::string url_encode_lower(const std::string& s) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
            c == '_' || c == '.' || c == '~') {
            out += static_cast<char>(c);
        } else {
            out += '%';
            out += digits[c >> 4];
            out += digits[c & 0xF];
        }
    }
    return out;
}

inline std::string to_lower_ascii(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// The base64 signature (not url-encoded) of `sr_as_sent` and `se_as_sent` with `key_base64`.
inline std::string sas_signature(const std::string& sr_as_sent, const std::string& se_as_sent,
                                 const std::string& key_base64) {
    const bytes key = base64_decode(key_base64);
    const std::string data = sr_as_sent + "\n" + se_as_sent;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
         reinterpret_cast<const unsigned char*>(data.data()), data.size(), md, &len);
    return base64_encode(std::span<const unsigned char>(md, len));
}

struct sas_token_parts {
    std::string header;  // "SharedAccessSignature sr=…&sig=…&se=…[&skn=…]"
    std::string sig;     // the base64 signature (a secret that must never be logged)
};

// A token for `resource` ("host/devices/x", lower-cased and url-encoded like the product's clients).
inline sas_token_parts make_sas(const std::string& resource, const std::string& key_base64,
                                const std::string& policy, long long expiry) {
    const std::string sr = url_encode_lower(to_lower_ascii(resource));
    const std::string se = std::to_string(expiry);
    sas_token_parts t;
    t.sig = sas_signature(sr, se, key_base64);
    t.header = "SharedAccessSignature sr=" + sr + "&sig=" + url_encode_lower(t.sig) + "&se=" + se;
    if (!policy.empty()) t.header += "&skn=" + policy;
    return t;
}

inline std::string sas_token(const std::string& resource, const std::string& key_base64,
                             const std::string& policy, long long expiry) {
    return make_sas(resource, key_base64, policy, expiry).header;
}

// Lower-case hex of the bytes of `s` (wire_client.py reports binary messages as "data_hex").
inline std::string to_hex_string(const std::string& s) {
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        out += digits[c >> 4];
        out += digits[c & 0xF];
    }
    return out;
}

inline long long unix_now() { return static_cast<long long>(std::time(nullptr)); }

// The value of `name` in a connection string ("" if absent).
inline std::string cs_field(const std::string& cs, const std::string& name) {
    std::size_t start = 0;
    while (start <= cs.size()) {
        std::size_t end = cs.find(';', start);
        if (end == std::string::npos) end = cs.size();
        const std::string part = cs.substr(start, end - start);
        const std::size_t eq = part.find('=');
        if (eq != std::string::npos && to_lower_ascii(part.substr(0, eq)) == to_lower_ascii(name))
            return part.substr(eq + 1);
        start = end + 1;
    }
    return {};
}

// ---------------------------------------------------------------------------------------------
// Admin shortcuts.

// Runs an admin command that must succeed; its stdout, trimmed.
inline std::string admin_ok(relay_fixture& relay, const std::vector<std::string>& args) {
    run_result r = relay.admin(args);
    INFO(describe(args, r));
    REQUIRE(r.exit_code == 0);
    return trim(r.out);
}

// A shared access policy's connection string.
inline std::string policy_connection_string(relay_fixture& relay, const std::string& policy,
                                            const std::string& key_type = "primary") {
    return admin_ok(relay, {"show-connection-string", "--policy-name", policy, "--key-type", key_type});
}

inline std::string policy_key(relay_fixture& relay, const std::string& policy,
                              const std::string& key_type = "primary") {
    return cs_field(policy_connection_string(relay, policy, key_type), "SharedAccessKey");
}

inline std::string device_connection_string(relay_fixture& relay, const std::string& id,
                                            const std::string& key_type = "primary") {
    return admin_ok(relay,
                    {"device-identity", "show-connection-string", "--device-id", id, "--key-type", key_type});
}

// "Connected", "Disconnected", or "" when the device cannot be shown (deleted…).
inline std::string device_state(relay_fixture& relay, const std::string& id) {
    run_result r = relay.admin({"device-identity", "show", "--device-id", id});
    static const std::regex state(R"re("connectionState"\s*:\s*"([A-Za-z]*)")re");
    std::smatch m;
    if (r.exit_code != 0 || !std::regex_search(r.out, m, state)) return "";
    return m[1];
}

// The relay's host name as written in connection strings ("127.0.0.1:PORT").
inline std::string relay_host(relay_fixture& relay) {
    return cs_field(policy_connection_string(relay, "service"), "HostName");
}

// Starts a device proxy for `device_cs` forwarding to 127.0.0.1:`target_port`.
inline std::unique_ptr<process> spawn_device_proxy(relay_fixture& relay, const std::string& name,
                                                   const std::string& device_cs, int target_port,
                                                   const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {bin::device_proxy, "--ca-file", relay.ca_file().string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    argv.insert(argv.end(), {device_cs, "127.0.0.1", std::to_string(target_port)});
    return relay.spawn(name, std::move(argv));
}

// Number of (non-overlapping) occurrences of `needle`.
inline std::size_t occurrences(const std::string& haystack, const std::string& needle) {
    std::size_t n = 0;
    for (std::size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + needle.size())) ++n;
    return n;
}

// Connects to a local port (a service proxy), sends `probe` random bytes and expects them back;
// the connected socket, or an empty one (with `error` set) when the echo did not come back.
inline unique_fd echo_probe(int port, std::size_t probe, std::string& error, millis timeout = k_connect_timeout) {
    connect_result c = try_connect("127.0.0.1", port, 5s);
    if (!c.ok()) {
        error = "connect: " + c.describe();
        return unique_fd();
    }
    const bytes data = random_bytes(probe);
    transfer_result r = transfer(c.fd.get(), data, {.receive_exactly = probe, .timeout = timeout});
    if (!r.ok()) {
        error = r.error;
        return unique_fd();
    }
    if (r.received_sha256 != sha256_hex(data)) {
        error = "echo came back different";
        return unique_fd();
    }
    return std::move(c.fd);
}

// A script step that waits until the registry lists `device` as Connected (written just after the
// control connection's 101; the connection itself is routable before the 101 leaves).
inline std::string wait_connected_step(relay_fixture& relay, const std::string& device) {
    const std::string token = sas_token(relay_host(relay), policy_key(relay, "registryRead"), "registryRead",
                                        unix_now() + 600);
    return step({{"op", "wait_connected"}, {"label", ("registered-" + device).c_str()}, {"device", device},
                 {"token", token}});
}

// ---------------------------------------------------------------------------------------------
// Certificates made with the openssl CLI.

inline void openssl_ok(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"openssl"};
    argv.insert(argv.end(), args.begin(), args.end());
    run_result r = run(argv);
    INFO(describe(argv, r));
    REQUIRE(r.exit_code == 0);
}

struct cert_files {
    std::filesystem::path cert, key;
};

// A self-signed P-256 certificate with CN=`cn` (a CA when `ca`).
inline cert_files make_self_signed(const std::filesystem::path& dir, const std::string& name,
                                   const std::string& cn, bool ca = false) {
    cert_files f{dir / (name + ".pem"), dir / (name + ".key")};
    std::vector<std::string> args = {"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                     "-nodes", "-keyout", f.key.string(), "-out", f.cert.string(),
                                     "-days", "2", "-subj", "/CN=" + cn};
    if (ca) {
        args.insert(args.end(), {"-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                                 "keyUsage=critical,keyCertSign,cRLSign"});
    } else {
        args.insert(args.end(), {"-addext", "basicConstraints=critical,CA:FALSE"});
    }
    openssl_ok(args);
    return f;
}

// A P-256 certificate with CN=`cn` issued by `issuer`.
inline cert_files make_issued(const std::filesystem::path& dir, const std::string& name, const std::string& cn,
                              const cert_files& issuer) {
    cert_files f{dir / (name + ".pem"), dir / (name + ".key")};
    const std::filesystem::path csr = dir / (name + ".csr");
    const std::filesystem::path ext = dir / (name + ".ext");
    {
        const std::string text = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                 "extendedKeyUsage=clientAuth\n";
        write_file(ext, std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(text.data()), text.size()));
    }
    openssl_ok({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                f.key.string(), "-out", csr.string(), "-subj", "/CN=" + cn});
    openssl_ok({"x509", "-req", "-in", csr.string(), "-CA", issuer.cert.string(), "-CAkey", issuer.key.string(),
                "-set_serial", std::to_string(1000 + static_cast<int>(random_bytes(1)[0])), "-days", "2",
                "-extfile", ext.string(), "-out", f.cert.string()});
    return f;
}

}  // namespace sgit
