// libFuzzer target: the SAS token parser and verifier (common/sas_token.hpp).
//  1. the whole input as an Authorization header value: parse_sas_token, then sas_signature_valid
//     with a fixed key (the corpus holds tokens really signed with it, so both outcomes are reached);
//  2. the input split at the first '\n' into (scope, resource): resource_covers;
//  3. make_sas_token over the first half, then parse_sas_token: what we sign we must accept.
#include "common/crypto.hpp"
#include "common/sas_token.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

// base64("Streamgate fuzzing key, 32 bytes"); fuzz/corpus/sas_token holds tokens signed with it.
constexpr std::string_view fuzz_key = "U3RyZWFtZ2F0ZSBmdXp6aW5nIGtleSwgMzIgYnl0ZXM=";
// base64("another key, not the fuzzing one")
constexpr std::string_view other_key = "YW5vdGhlciBrZXksIG5vdCB0aGUgZnV6emluZyBvbmU=";
constexpr std::int64_t max_expiry = std::int64_t{1} << 40;

// The raw value of the sig= field, as a header would carry it.
std::string_view raw_sig(std::string_view text)
{
    for (std::size_t at = text.find("sig="); at != std::string_view::npos; at = text.find("sig=", at + 1)) {
        if (at != 0 && text[at - 1] != '&' && text[at - 1] != ' ' && text[at - 1] != '\t')
            continue;
        auto value = text.substr(at + 4);
        return value.substr(0, value.find('&'));
    }
    return {};
}

void check_parse_and_verify(std::string_view text)
{
    auto parsed = sg::parse_sas_token(text);
    SG_FUZZ_CHECK(parsed.token.has_value() == parsed.error.empty());
    if (!parsed.token) {
        // "never echoing the signature": no current message contains '+' or '/'.
        auto sig = raw_sig(text);
        if (sig.size() >= 6 && sig.find_first_of("+/") != std::string_view::npos)
            SG_FUZZ_CHECK(parsed.error.find(sig) == std::string::npos);
        return;
    }
    const sg::sas_token& t = *parsed.token;
    SG_FUZZ_CHECK(!t.resource_encoded.empty());
    SG_FUZZ_CHECK(t.resource == sg_fuzz::ascii_lower(t.resource));
    SG_FUZZ_CHECK(t.expiry >= 0 && t.expiry <= max_expiry);
    SG_FUZZ_CHECK(!t.expiry_text.empty() && t.expiry_text.find_first_not_of("0123456789") == std::string::npos);
    auto sig_bytes = sg::base64_decode(t.signature);
    SG_FUZZ_CHECK(sig_bytes && sig_bytes->size() == 32);

    const bool valid = sg::sas_signature_valid(t, fuzz_key);
    // Independent recomputation: HMAC-SHA256 over sr as sent + "\n" + se as sent.
    const std::string expected =
        sg::base64_encode(sg::hmac_sha256(*sg::base64_decode(fuzz_key), t.resource_encoded + "\n" + t.expiry_text));
    SG_FUZZ_CHECK(valid == (expected == t.signature));
    if (valid)
        SG_FUZZ_CHECK(!sg::sas_signature_valid(t, other_key));
    // Keys that are empty or not base64 never verify anything.
    SG_FUZZ_CHECK(!sg::sas_signature_valid(t, ""));
    SG_FUZZ_CHECK(!sg::sas_signature_valid(t, "not base64!"));
}

void check_covers(std::string_view scope, std::string_view resource)
{
    const bool covers = sg::resource_covers(scope, resource);
    // Case-insensitive.
    SG_FUZZ_CHECK(covers == sg::resource_covers(sg_fuzz::ascii_upper(scope), resource));
    SG_FUZZ_CHECK(covers == sg::resource_covers(scope, sg_fuzz::ascii_upper(resource)));
    if (covers) {
        std::string_view s = scope;
        while (!s.empty() && s.back() == '/') s.remove_suffix(1);
        const std::string ls = sg_fuzz::ascii_lower(s), lr = sg_fuzz::ascii_lower(resource);
        // A prefix by whole segments...
        SG_FUZZ_CHECK(!ls.empty() && lr.compare(0, ls.size(), ls) == 0);
        SG_FUZZ_CHECK(lr.size() == ls.size() || lr[ls.size()] == '/');
        // ...and no "." or ".." segment on either side, which could walk out of the scope.
        for (const std::string* p : {&ls, &lr}) {
            const std::string padded = "/" + *p + "/";
            SG_FUZZ_CHECK(padded.find("/./") == std::string::npos && padded.find("/../") == std::string::npos);
        }
    }
    // A scope covers itself and what lies below it, not a longer sibling ("h/a/b" vs "h/a/bc").
    if (!scope.empty() && scope.back() != '/' && sg::resource_covers(scope, scope)) {
        SG_FUZZ_CHECK(sg::resource_covers(scope, std::string(scope) + "/sub"));
        SG_FUZZ_CHECK(!sg::resource_covers(scope, std::string(scope) + "sub"));
    }
}

void check_round_trip(std::string_view resource, std::string_view key_name, std::int64_t expiry)
{
    if (resource.empty() || resource.size() > 1000 || key_name.size() > 200)
        return; // keeps the encoded token under the 4096-byte limit
    const std::string token = sg::make_sas_token(resource, fuzz_key, key_name, expiry);
    auto parsed = sg::parse_sas_token(token);
    SG_FUZZ_CHECK(parsed.token.has_value());
    const sg::sas_token& t = *parsed.token;
    SG_FUZZ_CHECK(t.resource == sg_fuzz::ascii_lower(resource));
    SG_FUZZ_CHECK(t.key_name == key_name);
    SG_FUZZ_CHECK(t.expiry == expiry);
    SG_FUZZ_CHECK(sg::sas_signature_valid(t, fuzz_key));
    SG_FUZZ_CHECK(!sg::sas_signature_valid(t, other_key));
    // Without the prefix too.
    auto bare = sg::parse_sas_token(std::string_view(token).substr(token.find(' ') + 1));
    SG_FUZZ_CHECK(bare.token && sg::sas_signature_valid(*bare.token, fuzz_key));
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view text = sg_fuzz::as_text(data, size);
    check_parse_and_verify(text);

    auto nl = text.find('\n');
    std::string_view first = text.substr(0, nl);
    std::string_view second = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    check_covers(first, second);

    std::int64_t expiry = 0;
    for (unsigned char c : second.substr(0, 8)) expiry = expiry * 131 + c;
    check_round_trip(first, second.substr(0, second.find('\n')), expiry % (max_expiry + 1));
    return 0;
}
