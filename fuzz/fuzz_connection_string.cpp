// libFuzzer target: sg::parse_connection_string (common/connection_string.hpp).
// sg::config_error is the expected answer to bad input; any other exception or a crash is a bug.
// Invariants checked:
//  - an accepted string is a device one (valid device id) or a service one, never both;
//  - host()/port() of an accepted string are usable (port 1..65535), to_string() parses back to the same;
//  - error messages never echo a value (messages name parts by position: a fragment may be key material).
#include "common/connection_string.hpp"
#include "common/device_id.hpp"
#include "fuzz/fuzz_check.hpp"

#include <vector>

namespace {

std::string_view trim(std::string_view s)
{
    const char* ws = " \t\r\n";
    auto b = s.find_first_not_of(ws);
    if (b == std::string_view::npos) return {};
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

// The value of each ';'-separated part (the whole part when it has no '=').
std::vector<std::string_view> values_of(std::string_view text)
{
    std::vector<std::string_view> out;
    for (std::size_t start = 0; start <= text.size();) {
        auto semi = text.find(';', start);
        if (semi == std::string_view::npos) semi = text.size();
        auto part = trim(text.substr(start, semi - start));
        start = semi + 1;
        auto eq = part.find('=');
        out.push_back(eq == std::string_view::npos ? part : trim(part.substr(eq + 1)));
    }
    return out;
}

bool same(const sg::connection_string& a, const sg::connection_string& b)
{
    return a.host_name == b.host_name && a.device_id == b.device_id &&
           a.shared_access_key_name == b.shared_access_key_name && a.shared_access_key == b.shared_access_key &&
           a.x509 == b.x509;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view text = sg_fuzz::as_text(data, size);
    sg::connection_string cs;
    try {
        cs = sg::parse_connection_string(text);
    } catch (const sg::config_error& e) {
        // No current message contains '+' or '/', both common in base64 keys: seeing such a value
        // inside the message means it was echoed.
        const std::string_view what = e.what();
        for (auto v : values_of(text))
            if (v.size() >= 6 && v.find_first_of("+/") != std::string_view::npos)
                SG_FUZZ_CHECK(what.find(v) == std::string_view::npos);
        return 0;
    }

    SG_FUZZ_CHECK(!cs.host_name.empty());
    SG_FUZZ_CHECK(cs.device_id.empty() != cs.shared_access_key_name.empty());
    SG_FUZZ_CHECK(cs.is_device() == !cs.device_id.empty());
    if (cs.is_device()) SG_FUZZ_CHECK(sg::is_valid_device_id(cs.device_id));
    if (cs.x509) SG_FUZZ_CHECK(cs.is_device());
    if (!cs.x509) SG_FUZZ_CHECK(!cs.shared_access_key.empty());
    SG_FUZZ_CHECK(!cs.host().empty());
    SG_FUZZ_CHECK(cs.port() != 0);

    // The canonical form is itself a connection string meaning the same thing.
    sg::connection_string again;
    try {
        again = sg::parse_connection_string(cs.to_string());
    } catch (const sg::config_error&) {
        SG_FUZZ_CHECK(!"to_string() of an accepted connection string is refused");
    }
    SG_FUZZ_CHECK(same(cs, again));
    SG_FUZZ_CHECK(again.to_string() == cs.to_string());
    return 0;
}
