#pragma once
// Shared access signature tokens exactly as IoT Hub defines them:
//   SharedAccessSignature sr={url-encoded resource}&sig={url-encoded base64 HMAC}&se={expiry}[&skn={policy}]
// The signature is HMAC-SHA256, keyed by the base64-decoded key, over
//   {sr exactly as it appears in the token} + "\n" + {se exactly as it appears}.
// Tokens made here url-encode the lower-cased resource with lower-case hex.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sg {

struct sas_token {
    std::string resource_encoded; // sr as sent
    std::string resource;          // sr decoded and lower-cased
    std::string signature;         // sig decoded (base64 text)
    std::string expiry_text;       // se as sent
    std::int64_t expiry = 0;       // se as seconds since the epoch
    std::string key_name;          // skn, empty when signed by a device key
};

std::string make_sas_token(std::string_view resource_uri, std::string_view key_base64,
                           std::string_view key_name, std::int64_t expiry_unix);

struct sas_parse_result {
    std::optional<sas_token> token;
    std::string error; // set when token is empty: what is wrong, never echoing the signature
};
// Accepts the header value with or without the "SharedAccessSignature " prefix.
// Rejects missing/duplicate/unknown fields, a non-numeric, negative or absurd se, bad escapes.
sas_parse_result parse_sas_token(std::string_view text);

// Recomputes the signature with key_base64 and compares in constant time.
bool sas_signature_valid(const sas_token& token, std::string_view key_base64);

// True when scope covers resource as a prefix by whole path segments, case-insensitively:
// "h/a/b" covers "h/a/b" and "h/a/b/c", not "h/a/bc".
bool resource_covers(std::string_view scope, std::string_view resource);

} // namespace sg
