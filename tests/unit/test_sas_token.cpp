#include <catch2/catch.hpp>

#include "common/crypto.hpp"
#include "common/sas_token.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <unistd.h>
#include <vector>

using namespace std::string_literals;

namespace {

// base64("streamgate-test-key-0123456789ab") and a second, unrelated key.
const std::string key = "c3RyZWFtZ2F0ZS10ZXN0LWtleS0wMTIzNDU2Nzg5YWI=";
const std::string other_key = "b3RoZXIta2V5LXRoYXQtaXMtMzItYnl0ZXMtbG9uZyE=";

// Runs a Python 3 script (the independent reference implementation) and returns its stdout.
std::string run_python(const std::string& script) {
    char path[] = "/tmp/sg_unit_sas_XXXXXX.py";
    int fd = mkstemps(path, 3);
    REQUIRE(fd >= 0);
    ::close(fd);
    std::ofstream(path) << script;
    FILE* pipe = popen((std::string("/usr/bin/env python3 ") + path).c_str(), "r");
    REQUIRE(pipe != nullptr);
    std::string out;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
    int status = pclose(pipe);
    std::remove(path);
    INFO("python output: " << out);
    REQUIRE(status == 0);
    return out;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

// A Python expression for s that survives any character, quotes included.
std::string py_str(const std::string& s) { return "bytes.fromhex('" + sg::hex_upper(s) + "').decode()"; }

const char* python_prelude = R"py(
import base64, hashlib, hmac, re, urllib.parse
def sign(key, sr, se):
    mac = hmac.new(base64.b64decode(key), (sr + "\n" + se).encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()
def lower_hex(s):
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), s)
)py";

bool verifies(const std::string& token, const std::string& with_key) {
    auto parsed = sg::parse_sas_token(token);
    INFO("token: " << token << "\nerror: " << parsed.error);
    REQUIRE(parsed.token);
    return sg::sas_signature_valid(*parsed.token, with_key);
}

std::string sig_field(const std::string& token) {
    auto at = token.find("sig=") + 4;
    return token.substr(at, token.find('&', at) - at);
}

} // namespace

TEST_CASE("make_sas_token equals an independent Python implementation", "[sas]") {
    struct sample {
        std::string uri;
        std::string key;
        std::string key_name;
        std::int64_t expiry;
    };
    const std::vector<sample> samples = {
        {"myhub.example:8443/devices/dev1", key, "", 1700000000},
        {"MyHub.Example/devices/Dev+1#x(y)", key, "service", 1456971697},
        {"myhub.example", other_key, "iothubowner", 0},
        {"h/devices/a b~c_d.e-f%g@h$i!j*k?l,m:n=o", other_key, "device", 1099511627776},
    };
    std::string script = python_prelude;
    for (const auto& s : samples) {
        script += "uri, key, skn, se = " + py_str(s.uri) + ", '" + s.key + "', " + py_str(s.key_name) + ", '" +
                  std::to_string(s.expiry) + "'\n";
        script += "sr = lower_hex(urllib.parse.quote(uri.lower(), safe=''))\n"
                  "token = 'SharedAccessSignature sr=' + sr + '&sig=' + urllib.parse.quote(sign(key, sr, se), safe='')"
                  " + '&se=' + se + ('&skn=' + skn if skn else '')\n"
                  "print(token)\n";
    }
    auto expected = lines_of(run_python(script));
    REQUIRE(expected.size() == samples.size());
    for (std::size_t i = 0; i < samples.size(); ++i) {
        const auto& s = samples[i];
        CHECK(sg::make_sas_token(s.uri, s.key, s.key_name, s.expiry) == expected[i]);
    }
    // The lower-case-hex resource encoding the spec asks for.
    CHECK(sg::make_sas_token("myhub.example:8443/devices/dev1", key, "", 1700000000)
              .rfind("SharedAccessSignature sr=myhub.example%3a8443%2fdevices%2fdev1&sig=", 0) == 0);
}

TEST_CASE("make_sas_token matches a vector from openssl dgst", "[sas]") {
    // printf 'myhub.example%%3a8443%%2fdevices%%2fdev1\n1700000000' |
    //   openssl dgst -sha256 -mac HMAC -macopt hexkey:<hex of the key> -binary | base64
    auto token = sg::make_sas_token("myhub.example:8443/devices/dev1", key, "", 1700000000);
    CHECK(token == "SharedAccessSignature sr=myhub.example%3a8443%2fdevices%2fdev1"
                   "&sig=KPM2HHMpBtRwQ646y7kGRrPAerOONG4L4ICrS61eXoc%3D&se=1700000000");
}

TEST_CASE("our verifier accepts Python quote_plus tokens and rejects tampered ones", "[sas]") {
    // Upper-case hex and the resource not lower-cased, as the IoT Hub docs' Python sample signs.
    std::string script = python_prelude + std::string(R"py(
key, other = ')py") + key + "', '" + other_key + R"py('
uri, se = "MyHub.example:8443/devices/dev1", "1700000000"
sr = urllib.parse.quote_plus(uri)
good = sign(key, sr, se)
raw = bytearray(base64.b64decode(good)); raw[7] ^= 0x01
flipped = base64.b64encode(bytes(raw)).decode()
def token(sr_field, sig): return "SharedAccessSignature " + urllib.parse.urlencode({"sr": sr_field, "sig": sig, "se": se, "skn": "service"})
print(token(uri, good))
print(token(uri, flipped))
print(token("myhub.example:8443/devices/dev2", good))
print(token(uri, sign(other, sr, se)))
print("SharedAccessSignature " + urllib.parse.urlencode({"se": "1700000001", "sig": good, "sr": uri}))
# A client that does not escape sig at all: its '+' must stay '+'.
for n in range(1700000000, 1700001000):
    s = sign(key, sr, str(n))
    if "+" in s and "/" in s:
        print("SharedAccessSignature sr=" + sr + "&sig=" + s + "&se=" + str(n))
        break
)py";
    auto t = lines_of(run_python(script));
    REQUIRE(t.size() == 6);
    CHECK(t[0].find("%3A8443%2Fdevices") != std::string::npos); // really upper-case hex
    CHECK(verifies(t[0], key));
    CHECK_FALSE(verifies(t[0], other_key));
    CHECK_FALSE(verifies(t[1], key)); // one signature bit flipped
    CHECK_FALSE(verifies(t[2], key)); // signature moved onto another resource
    CHECK_FALSE(verifies(t[3], key)); // signed with another key...
    CHECK(verifies(t[3], other_key)); // ...which it does verify with
    CHECK_FALSE(verifies(t[4], key)); // expiry changed after signing
    CHECK(sig_field(t[5]).find('+') != std::string::npos);
    CHECK(verifies(t[5], key));

    auto parsed = sg::parse_sas_token(t[0]).token;
    REQUIRE(parsed);
    CHECK(parsed->resource == "myhub.example:8443/devices/dev1");
    CHECK(parsed->resource_encoded == "MyHub.example%3A8443%2Fdevices%2Fdev1");
    CHECK(parsed->expiry == 1700000000);
    CHECK(parsed->expiry_text == "1700000000");
    CHECK(parsed->key_name == "service");
}

TEST_CASE("make_sas_token and parse_sas_token round-trip", "[sas]") {
    auto token = sg::make_sas_token("MyHub.example/devices/Dev#1", key, "registry Read", 1700000123);
    auto parsed = sg::parse_sas_token(token);
    REQUIRE(parsed.token);
    CHECK(parsed.error.empty());
    CHECK(parsed.token->resource == "myhub.example/devices/dev#1");
    CHECK(parsed.token->resource_encoded == "myhub.example%2fdevices%2fdev%231");
    CHECK(parsed.token->expiry == 1700000123);
    CHECK(parsed.token->key_name == "registry Read");
    CHECK(sg::base64_decode(parsed.token->signature)->size() == 32);
    CHECK(sg::sas_signature_valid(*parsed.token, key));
    CHECK_FALSE(sg::sas_signature_valid(*parsed.token, other_key));
    CHECK_FALSE(sg::sas_signature_valid(*parsed.token, "not base64!"));
    CHECK_FALSE(sg::sas_signature_valid(*parsed.token, key.substr(1)));
    CHECK_FALSE(sg::sas_signature_valid(*parsed.token, ""));

    // Without the scheme word, and with surrounding blanks, as some clients send it.
    auto bare = token.substr(std::string("SharedAccessSignature ").size());
    REQUIRE(sg::parse_sas_token(bare).token);
    CHECK(sg::sas_signature_valid(*sg::parse_sas_token(bare).token, key));
    CHECK(sg::parse_sas_token("  " + token + " ").token);

    CHECK(sg::make_sas_token("h", key, "", 5).find("skn") == std::string::npos);
}

TEST_CASE("make_sas_token with an undecodable key makes an unusable token", "[sas]") {
    auto token = sg::make_sas_token("h/devices/d", "not base64!", "", 1700000000);
    CHECK_FALSE(sg::parse_sas_token(token).token);
}

namespace {
// A genuine signature, so that only the field under test is wrong.
const std::string sig = sig_field(sg::make_sas_token("h/devices/d", key, "", 1700000000));
const std::string sig_decoded = *sg::url_decode(sig);

// Asserts that text is refused with a message containing `expected` and no trace of the signature.
void check_rejected(const std::string& text, const std::string& expected) {
    INFO("token: " << text);
    auto r = sg::parse_sas_token(text);
    INFO("error: " << r.error);
    CHECK_FALSE(r.token);
    CHECK(r.error.find(expected) != std::string::npos);
    CHECK(r.error.find(sig.substr(0, 12)) == std::string::npos);
    CHECK(r.error.find(sig_decoded.substr(0, 12)) == std::string::npos);
}
std::string tok(const std::string& fields) { return "SharedAccessSignature " + fields; }
} // namespace

TEST_CASE("parse_sas_token accepts fields in any order", "[sas]") {
    for (const auto& fields : {"sr=h&sig=" + sig + "&se=1700000000", "se=1700000000&sig=" + sig + "&sr=h",
                               "sig=" + sig + "&se=1700000000&skn=p&sr=h"}) {
        auto r = sg::parse_sas_token(tok(fields));
        INFO(fields << " -> " << r.error);
        CHECK(r.token);
    }
    CHECK(sg::parse_sas_token(tok("sr=h&sig=" + sig + "&se=0")).token);
    CHECK(sg::parse_sas_token(tok("sr=h&sig=" + sig + "&se=1099511627776")).token->expiry == (std::int64_t{1} << 40));
    CHECK(sg::parse_sas_token(tok("sr=h&sig=" + sig + "&se=0001700000000")).token->expiry == 1700000000);
}

TEST_CASE("parse_sas_token rejects missing, duplicate, unknown and empty fields", "[sas]") {
    const std::string sr = "sr=h%2fdevices%2fd", sg_ = "sig=" + sig, se = "se=1700000000";
    check_rejected(tok(sg_ + "&" + se), "missing sr");
    check_rejected(tok(sr + "&" + se), "missing sig");
    check_rejected(tok(sr + "&" + sg_), "missing se");
    check_rejected(tok(sr + "&" + sr + "&" + sg_ + "&" + se), "duplicate sr");
    check_rejected(tok(sr + "&" + sg_ + "&" + sg_ + "&" + se), "duplicate sig");
    check_rejected(tok(sr + "&" + sg_ + "&" + se + "&se=1700000001"), "duplicate se");
    check_rejected(tok(sr + "&" + sg_ + "&" + se + "&skn=a&skn=b"), "duplicate skn");
    check_rejected(tok(sr + "&" + sg_ + "&" + se + "&foo=bar"), "unknown field");
    check_rejected(tok(sr + "&" + sg_ + "&" + se + "&SR=h"), "unknown field");
    check_rejected(tok("sr=&" + sg_ + "&" + se), "empty sr");
    check_rejected(tok(sr + "&sig=&" + se), "empty sig");
    check_rejected(tok(sr + "&" + sg_ + "&se="), "empty se");
    check_rejected(tok(sr + "&" + sg_ + "&" + se + "&skn="), "empty skn");
    check_rejected(tok(sr + "&" + sg_ + "&" + se + "&"), "has no '='");
    check_rejected(tok(sr + "&&" + sg_ + "&" + se), "has no '='");
}

TEST_CASE("parse_sas_token rejects bad escapes and bad signatures", "[sas]") {
    const std::string sg_ = "&sig=" + sig, se = "&se=1700000000";
    check_rejected(tok("sr=h%2" + sg_ + se), "bad %-escape in sr");
    check_rejected(tok("sr=h%zzd" + sg_ + se), "bad %-escape in sr");
    check_rejected(tok("sr=h%" + sg_ + se), "bad %-escape in sr");
    check_rejected(tok("sr=h&sig=%G1" + sig.substr(3) + se), "bad %-escape in sig");
    check_rejected(tok("sr=h" + sg_ + se + "&skn=%x"), "bad %-escape in skn");
    check_rejected(tok("sr=h&sig=abc" + se), "sig is not a base64 HMAC-SHA256");
    check_rejected(tok("sr=h&sig=" + sg::base64_encode(std::string(31, 'x')) + se), "sig is not a base64 HMAC-SHA256");
}

TEST_CASE("parse_sas_token rejects bad expiries", "[sas]") {
    const std::string head = "sr=h&sig=" + sig + "&se=";
    check_rejected(tok(head + "-1"), "se is negative");
    check_rejected(tok(head + "-1700000000"), "se is negative");
    check_rejected(tok(head + "12a"), "se is not a decimal number");
    check_rejected(tok(head + "1.5"), "se is not a decimal number");
    check_rejected(tok(head + "+5"), "se is not a decimal number");
    check_rejected(tok(head + "0x10"), "se is not a decimal number");
    check_rejected(tok(head + "1e9"), "se is not a decimal number");
    check_rejected(tok(head + "%31"), "se is not a decimal number");
    check_rejected(tok(head + "1099511627777"), "se is out of range"); // 2^40 + 1
    check_rejected(tok(head + "99999999999999999999999999999999"), "se is out of range");
}

TEST_CASE("parse_sas_token rejects what is not a SAS token", "[sas]") {
    check_rejected("", "not a SharedAccessSignature token");
    check_rejected("   ", "not a SharedAccessSignature token");
    check_rejected("SharedAccessSignature", "not a SharedAccessSignature token");
    check_rejected("SharedAccessSignature ", "not a SharedAccessSignature token");
    check_rejected("hello", "not a SharedAccessSignature token");
    check_rejected("Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "not a SharedAccessSignature token");
    check_rejected("Basic dXNlcjpwYXNz", "not a SharedAccessSignature token");
    check_rejected("sharedaccesssignature sr=h&sig=" + sig + "&se=1", "not a SharedAccessSignature token");
    check_rejected("SharedAccessSignature sr&sig&se", "not a SharedAccessSignature token");
    check_rejected("SharedAccessSignature sr=h sig=" + sig, "not a SharedAccessSignature token");
}

TEST_CASE("parse_sas_token rejects tokens over 4096 bytes", "[sas]") {
    const std::string head = "SharedAccessSignature sr=h&sig=" + sig + "&se=1700000000&skn=";
    const std::string exactly = head + std::string(4096 - head.size(), 'p');
    REQUIRE(exactly.size() == 4096);
    CHECK(sg::parse_sas_token(exactly).token);
    check_rejected(exactly + "p", "longer than 4096 bytes");
    check_rejected(std::string(10 * 1024 * 1024, 'a'), "longer than 4096 bytes");
}

TEST_CASE("parse_sas_token survives mangled input without echoing the signature", "[sas]") {
    const std::string good = sg::make_sas_token("h/devices/d", key, "p", 1700000000);
    std::mt19937 rng(12345);
    int accepted = 0, rejected = 0;
    const std::string alphabet = "&=%sr sigkn0123456789+/\0\xff"s; // characters that matter to the parser
    for (int i = 0; i < 20000; ++i) {
        std::string t = good;
        for (int edits = 1 + static_cast<int>(rng() % 4); edits > 0; --edits) {
            std::size_t at = rng() % (t.size() + 1);
            char c = alphabet[rng() % alphabet.size()];
            switch (rng() % 3) {
            case 0: t.insert(at, 1, c); break;
            case 1: if (at < t.size()) t.erase(at, 1); break;
            default: if (at < t.size()) t[at] = c; break;
            }
        }
        auto r = sg::parse_sas_token(t);
        if (r.token.has_value() != r.error.empty()) FAIL("token and error disagree for: " << t);
        // Token-specific substrings only: short fragments occur in ordinary words.
        if (r.error.find(sig.substr(0, 12)) != std::string::npos) FAIL("echoed the signature: " << t);
        ++(r.token ? accepted : rejected);
    }
    CHECK(rejected > 10000);
    CHECK(accepted > 0);
}

TEST_CASE("resource_covers works by whole segments, case-insensitively", "[sas]") {
    struct row {
        const char* scope;
        const char* resource;
        bool covers;
    };
    const row table[] = {
        {"h/a/b", "h/a/b", true},
        {"h/a/b", "h/a/b/c", true},
        {"h/a/b", "h/a/b/c/d", true},
        {"h/a/b", "h/a/bc", false},
        {"h/a/b", "h/a", false},
        {"h/a/b", "h/a/", false},
        {"h/a/b/", "h/a/b", true},
        {"h/a/b/", "h/a/b/c", true},
        {"h/a/b/", "h/a/bc", false},
        {"h", "h/anything", true},
        {"h", "h/devices/dev1/streams/ssh", true},
        {"h", "hx/devices/dev1", false},
        {"h", "h", true},
        {"H/Devices/Dev1", "h/devices/dev1/streams", true},
        {"h/devices/dev1", "H/DEVICES/DEV1", true},
        {"myhub.example:8443/devices/dev1", "myhub.example:8443/devices/dev1/streams/x", true},
        {"myhub.example:8443/devices/dev1", "myhub.example:8443/devices/dev10", false},
        {"myhub.example/devices/dev1", "myhub.example:8443/devices/dev1", false},
        {"h/a", "x/h/a", false},
        {"", "h", false},
        {"", "", false},
        {"/", "h", false},
        {"/", "/h", false},
        {"h", "", false},
        {"h/devices/dev1", "h/devices/dev1/../dev2", false},
        {"h/devices/dev1", "h/devices/dev1/./x", false},
        {"h/devices/dev1/..", "h/devices/dev1/../dev2", false},
    };
    for (const auto& r : table) {
        INFO("scope '" << r.scope << "' resource '" << r.resource << "'");
        CHECK(sg::resource_covers(r.scope, r.resource) == r.covers);
    }
}
