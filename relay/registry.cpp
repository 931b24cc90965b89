// Backend-independent parts of the registry: names of enums and permissions, and what every
// backend does the same way (identifiers, etags, default policies, which fields a write sets).
#include "relay/registry.hpp"
#include "relay/registry_util.hpp"

#include <ctime>
#include "common/crypto.hpp"

namespace sg::relay {

namespace {
constexpr std::pair<device_status, std::string_view> status_names[] = {
    {device_status::enabled, "enabled"}, {device_status::disabled, "disabled"}};
constexpr std::pair<auth_type, std::string_view> auth_names[] = {
    {auth_type::sas, "sas"}, {auth_type::self_signed, "selfSigned"},
    {auth_type::certificate_authority, "certificateAuthority"}};

template <class E, std::size_t N>
std::string_view name_of(const std::pair<E, std::string_view> (&table)[N], E value)
{
    for (const auto& [v, name] : table)
        if (v == value) return name;
    return table[0].second;
}

template <class E, std::size_t N>
std::optional<E> value_of(const std::pair<E, std::string_view> (&table)[N], std::string_view name)
{
    for (const auto& [v, n] : table)
        if (n == name) return v;
    return std::nullopt;
}
} // namespace

std::string_view to_string(device_status s) { return name_of(status_names, s); }
std::string_view to_string(auth_type a) { return name_of(auth_names, a); }
std::optional<device_status> parse_device_status(std::string_view s) { return value_of(status_names, s); }
std::optional<auth_type> parse_auth_type(std::string_view s) { return value_of(auth_names, s); }

std::string permissions_to_string(unsigned permissions)
{
    static constexpr std::pair<unsigned, const char*> names[] = {
        {permission::registry_read, "RegistryRead"},
        {permission::registry_write, "RegistryWrite"},
        {permission::service_connect, "ServiceConnect"},
        {permission::device_connect, "DeviceConnect"},
    };
    std::string out;
    for (const auto& [bit, name] : names) {
        if (!(permissions & bit)) continue;
        if (!out.empty()) out += ", ";
        out += name;
    }
    return out;
}

std::string utc_iso8601(std::chrono::system_clock::time_point t)
{
    std::time_t seconds = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string utc_now_iso8601() { return utc_iso8601(std::chrono::system_clock::now()); }

bool is_postgres_url(std::string_view url)
{
    return url.starts_with("postgresql://") || url.starts_with("postgres://");
}

namespace detail {

std::string new_generation_id()
{
    std::string bytes = random_bytes(8);
    std::uint64_t v = 0;
    for (unsigned char c : bytes) v = (v << 8) | c;
    std::string digits = std::to_string(v % 1'000'000'000'000'000'000ULL);
    return "6" + std::string(18 - digits.size(), '0') + digits;
}

std::string new_etag() { return random_token(9); }

bool etag_matches(std::string_view if_match, std::string_view stored)
{
    return if_match.empty() || if_match == "*" || if_match == stored;
}

std::vector<access_policy> default_policies()
{
    using namespace permission;
    const std::pair<const char*, unsigned> defaults[] = {
        {"iothubowner", registry_read | registry_write | service_connect | device_connect},
        {"service", service_connect}, {"device", device_connect}, {"registryRead", registry_read},
        {"registryReadWrite", registry_read | registry_write},
    };
    std::vector<access_policy> out;
    for (const auto& [name, perms] : defaults)
        out.push_back({name, random_key_base64(32), random_key_base64(32), perms});
    return out;
}

void prepare_new_device(device_identity& d)
{
    const std::string now = utc_now_iso8601();
    d.generation_id = new_generation_id();
    d.etag = new_etag();
    if (d.authentication == auth_type::sas) {
        if (d.primary_key.empty()) d.primary_key = random_key_base64(32);
        if (d.secondary_key.empty()) d.secondary_key = random_key_base64(32);
    }
    d.connected = false;
    d.connection_state_updated_time = d.status_updated_time = d.last_activity_time = now;
}

void prepare_update(device_identity& d, const device_identity& stored)
{
    // An sas device always has keys: an update that omits them keeps the stored ones.
    if (d.authentication == auth_type::sas) {
        if (d.primary_key.empty())
            d.primary_key = stored.primary_key.empty() ? random_key_base64(32) : stored.primary_key;
        if (d.secondary_key.empty())
            d.secondary_key = stored.secondary_key.empty() ? random_key_base64(32) : stored.secondary_key;
    }
    d.generation_id = stored.generation_id;
    d.etag = new_etag();
    d.connected = stored.connected;
    d.connection_state_updated_time = stored.connection_state_updated_time;
    d.last_activity_time = stored.last_activity_time;
    d.status_updated_time = d.status != stored.status ? utc_now_iso8601() : stored.status_updated_time;
}

} // namespace detail
} // namespace sg::relay

namespace sg::relay {

std::string redact_database_url(std::string_view url)
{
    std::string out(url);
    auto scheme = out.find("://");
    if (scheme != std::string::npos) {
        auto start = scheme + 3;
        auto at = out.find('@', start);
        auto slash = out.find('/', start);
        if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
            auto colon = out.find(':', start);
            if (colon != std::string::npos && colon < at)
                out.replace(colon + 1, at - colon - 1, "***");
        }
    }
    for (std::size_t at = out.find("password="); at != std::string::npos; at = out.find("password=", at + 1)) {
        if (at > 0 && out[at - 1] != '?' && out[at - 1] != '&')
            continue;
        auto value = at + 9;
        auto end = out.find('&', value);
        out.replace(value, (end == std::string::npos ? out.size() : end) - value, "***");
    }
    return out;
}

} // namespace sg::relay
