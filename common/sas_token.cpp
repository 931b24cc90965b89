#include "common/sas_token.hpp"

#include "common/crypto.hpp"

#include <utility>

namespace sg {

namespace {

constexpr std::size_t max_token_size = 4096;
constexpr std::int64_t max_expiry = std::int64_t{1} << 40; // ~36,000 years: anything above is garbage
constexpr std::string_view prefix = "SharedAccessSignature";

std::string sign(std::string_view key_bytes, std::string_view sr, std::string_view se) {
    std::string to_sign;
    to_sign.reserve(sr.size() + 1 + se.size());
    to_sign.append(sr).append("\n").append(se);
    return base64_encode(hmac_sha256(key_bytes, to_sign));
}

sas_parse_result failure(std::string message) { return {std::nullopt, "SAS token: " + std::move(message)}; }

// Strips the scheme word when present; a different scheme ("Bearer ...") is not ours.
std::optional<std::string_view> strip_prefix(std::string_view text) {
    auto is_space = [](char c) { return c == ' ' || c == '\t'; };
    while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
    while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
    auto space = text.find_first_of(" \t");
    if (space == std::string_view::npos) return text;
    if (text.substr(0, space) != prefix) return std::nullopt;
    text.remove_prefix(space);
    while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
    return text;
}

} // namespace

std::string make_sas_token(std::string_view resource_uri, std::string_view key_base64,
                           std::string_view key_name, std::int64_t expiry_unix) {
    std::string sr = url_encode(to_lower(resource_uri), true);
    std::string se = std::to_string(expiry_unix);
    // An undecodable key yields an empty sig, which every verifier (ours included) refuses,
    // rather than a token signed with some accidental key.
    auto key = base64_decode(key_base64);
    std::string sig = key ? url_encode(sign(*key, sr, se)) : std::string{};
    std::string token = std::string(prefix) + " sr=" + sr + "&sig=" + sig + "&se=" + se;
    if (!key_name.empty()) token += "&skn=" + url_encode(key_name);
    return token;
}

sas_parse_result parse_sas_token(std::string_view text) {
    if (text.size() > max_token_size) return failure("longer than 4096 bytes");
    auto body = strip_prefix(text);
    if (!body || body->empty()) return failure("not a SharedAccessSignature token");
    // Every field is percent-encoded, so blanks, controls and raw non-ASCII mean something else.
    for (char c : *body)
        if (c <= ' ' || c >= 0x7f) return failure("not a SharedAccessSignature token (unexpected character)");

    // Index order is the order fields are reported missing in.
    static const std::string_view names[] = {"sr", "sig", "se", "skn"};
    std::optional<std::string_view> raw[4];
    for (std::size_t start = 0; start <= body->size();) {
        auto amp = body->find('&', start);
        if (amp == std::string_view::npos) amp = body->size();
        std::string_view field = body->substr(start, amp - start);
        start = amp + 1;
        // Fields are never quoted back: a mangled token can put signature bytes anywhere.
        auto eq = field.find('=');
        if (eq == std::string_view::npos) return failure("not a SharedAccessSignature token (a field has no '=')");
        std::string_view name = field.substr(0, eq);
        std::size_t i = 0;
        while (i < 4 && names[i] != name) ++i;
        if (i == 4) return failure("unknown field (expected sr, sig, se and optionally skn)");
        if (raw[i]) return failure("duplicate " + std::string(name));
        if (eq + 1 == field.size()) return failure("empty " + std::string(name));
        raw[i] = field.substr(eq + 1);
    }
    for (std::size_t i = 0; i < 3; ++i)
        if (!raw[i]) return failure("missing " + std::string(names[i]));

    sas_token t;
    // '+' stays '+': clients that leave the base64 signature unescaped must still verify.
    auto sr = url_decode(*raw[0]);
    if (!sr) return failure("bad %-escape in sr");
    auto sig = url_decode(*raw[1]);
    if (!sig) return failure("bad %-escape in sig");
    auto sig_bytes = base64_decode(*sig);
    if (!sig_bytes || sig_bytes->size() != 32) return failure("sig is not a base64 HMAC-SHA256");
    if (raw[3]) {
        auto skn = url_decode(*raw[3]);
        if (!skn) return failure("bad %-escape in skn");
        t.key_name = std::move(*skn);
    }

    std::string_view se = *raw[2];
    if (se.front() == '-') return failure("se is negative");
    std::int64_t expiry = 0;
    for (char c : se) {
        if (c < '0' || c > '9') return failure("se is not a decimal number of seconds");
        expiry = expiry * 10 + (c - '0');
        if (expiry > max_expiry) return failure("se is out of range");
    }

    t.resource_encoded = std::string(*raw[0]);
    t.resource = to_lower(*sr);
    t.signature = std::move(*sig);
    t.expiry_text = std::string(se);
    t.expiry = expiry;
    return {std::move(t), {}};
}

bool sas_signature_valid(const sas_token& token, std::string_view key_base64) {
    auto key = base64_decode(key_base64);
    // An empty key would let anyone sign; treat it like an invalid one.
    if (!key || key->empty()) return false;
    return constant_time_equal(sign(*key, token.resource_encoded, token.expiry_text), token.signature);
}

bool resource_covers(std::string_view scope, std::string_view resource) {
    while (!scope.empty() && scope.back() == '/') scope.remove_suffix(1);
    if (scope.empty()) return false;
    std::string s = to_lower(scope);
    std::string r = to_lower(resource);
    // "." and ".." segments would let a prefix match reach outside the scope once a path is normalised.
    for (const std::string* p : {&s, &r}) {
        const std::string padded = "/" + *p + "/";
        if (padded.find("/./") != std::string::npos || padded.find("/../") != std::string::npos) return false;
    }
    if (r.size() < s.size() || r.compare(0, s.size(), s) != 0) return false;
    return r.size() == s.size() || r[s.size()] == '/';
}

} // namespace sg
