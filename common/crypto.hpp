#pragma once
// Small wrappers over OpenSSL's libcrypto: encodings, HMAC, digests, randomness.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace sg {

std::string base64_encode(std::string_view bytes);
// Strict standard base64 (with '=' padding); nullopt on any invalid character or length.
std::optional<std::string> base64_decode(std::string_view text);
// URL-safe base64 without padding, for opaque tokens.
std::string base64url_encode(std::string_view bytes);

// Raw 32-byte HMAC-SHA256 of data under key.
std::string hmac_sha256(std::string_view key, std::string_view data);
// Raw 32-byte SHA-256.
std::string sha256(std::string_view data);
// Upper-case hex, as X.509 thumbprints are shown.
std::string hex_upper(std::string_view bytes);

// Constant-time comparison (CRYPTO_memcmp); different lengths compare unequal.
bool constant_time_equal(std::string_view a, std::string_view b);

std::string random_bytes(std::size_t n);
// A fresh base64 key of n random bytes (shared access keys are 32 bytes).
std::string random_key_base64(std::size_t n = 32);
// A fresh opaque URL-safe token of n random bytes.
std::string random_token(std::size_t n = 32);

// Percent-encoding of everything outside [A-Za-z0-9-_.~]; hex digits lower-case when asked.
std::string url_encode(std::string_view text, bool lower_case_hex = false);
// Decodes %XX (and, when plus_is_space, '+'); nullopt on a malformed escape.
std::optional<std::string> url_decode(std::string_view text, bool plus_is_space = false);
// The value of `name` in a query string "a=1&b=2", decoded as url_decode does; nullopt when
// absent or malformed.
std::optional<std::string> query_value(std::string_view query, std::string_view name, bool plus_is_space = false);

std::string to_lower(std::string_view text);

} // namespace sg
