#include "relay/auth.hpp"

#include <cctype>
#include <ctime>
#include "common/crypto.hpp"
#include "common/sas_token.hpp"

namespace sg::relay {

struct authenticator::parsed {
    sas_token token;
};

namespace {
failure unauthorized(std::string message) { return failure{codes::unauthorized, std::move(message)}; }

// "host:port" / "[::1]:port" / "host" -> host, lower-cased.
std::string strip_port(std::string_view authority)
{
    if (!authority.empty() && authority.front() == '[') {
        auto close = authority.find(']');
        return to_lower(authority.substr(1, close == std::string_view::npos ? std::string_view::npos : close - 1));
    }
    auto colon = authority.find(':');
    if (colon != std::string_view::npos && authority.find(':', colon + 1) == std::string_view::npos)
        authority = authority.substr(0, colon);
    return to_lower(authority);
}
} // namespace

authenticator::authenticator(registry& reg, std::vector<std::string> host_names, std::chrono::seconds clock_skew,
                             clock_fn now)
    : registry_(reg), clock_skew_(clock_skew), now_(std::move(now))
{
    for (auto& h : host_names)
        host_names_.push_back(strip_port(h));
    if (!now_)
        now_ = [] { return static_cast<std::int64_t>(std::time(nullptr)); };
}

failure authenticator::parse(std::string_view authorization, std::string_view resource_path, parsed& out) const
{
    if (authorization.empty())
        return unauthorized("missing Authorization header");
    auto result = parse_sas_token(authorization);
    if (!result.token)
        return unauthorized("malformed SharedAccessSignature: " + result.error);
    out.token = std::move(*result.token);
    if (out.token.expiry + clock_skew_.count() < now_())
        return unauthorized("token expired");

    // The scope names this relay by one of its host names, with or without the port.
    const std::string& scope = out.token.resource;
    auto slash = scope.find('/');
    std::string host = strip_port(std::string_view(scope).substr(0, slash));
    bool known_host = false;
    for (const auto& h : host_names_)
        known_host = known_host || h == host;
    if (!known_host)
        return unauthorized("token scope names another host");
    std::string token_scope = host + (slash == std::string::npos ? "" : scope.substr(slash));
    if (!resource_covers(token_scope, host + to_lower(resource_path)))
        return unauthorized("token scope does not cover " + std::string(resource_path));
    return {};
}

failure authenticator::authorize_policy(std::string_view authorization, unsigned permission,
                                        std::string_view resource_path) const
{
    parsed p;
    if (auto f = parse(authorization, resource_path, p))
        return f;
    if (p.token.key_name.empty())
        return unauthorized("a device key cannot authorize this operation; use a shared access policy with " +
                            permissions_to_string(permission));
    auto policy = registry_.find_policy(p.token.key_name);
    if (!policy || !(sas_signature_valid(p.token, policy->primary_key) || sas_signature_valid(p.token, policy->secondary_key)))
        return unauthorized("signature does not match a key of policy '" + p.token.key_name.substr(0, 64) + "'");
    if ((policy->permissions & permission) != permission)
        return unauthorized("policy '" + policy->name + "' lacks the " + permissions_to_string(permission) + " permission");
    return {};
}

namespace {
std::string key_digest(std::string_view key) { return hex_upper(sha256(key)); }

bool thumbprint_matches(const device_identity& d, std::string_view thumbprint)
{
    auto upper = [](std::string_view s) {
        std::string out(s);
        for (auto& c : out)
            c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        return out;
    };
    std::string t = upper(thumbprint);
    return !t.empty() && (t == upper(d.primary_thumbprint) || t == upper(d.secondary_thumbprint));
}
} // namespace

failure authenticator::authorize_device(std::string_view authorization, std::string_view device_id,
                                        device_identity* device, const peer_certificate* certificate,
                                        std::string* credential) const
{
    std::string used;
    std::optional<device_identity> found;
    if (authorization.empty() && certificate && !certificate->thumbprint.empty()) {
        found = registry_.find_device(device_id);
        if (!found)
            return unauthorized("client certificate does not match a registered device");
        if (found->authentication == auth_type::self_signed) {
            if (!thumbprint_matches(*found, certificate->thumbprint))
                return unauthorized("client certificate thumbprint does not match the device's");
        } else if (found->authentication == auth_type::certificate_authority) {
            if (!certificate->chain_trusted)
                return unauthorized("client certificate does not chain to a device CA of this relay");
            if (certificate->common_name != device_id)
                return unauthorized("client certificate's CN does not equal the device id");
        } else {
            return unauthorized("device is registered for SAS authentication, not X.509");
        }
        used = found->authentication == auth_type::self_signed
                   ? "x509:" + certificate->thumbprint
                   : "x509ca:" + certificate->ca_thumbprint + ":" + certificate->ca_name;
    } else {
        parsed p;
        std::string path = "/devices/" + std::string(device_id);
        if (auto f = parse(authorization, path, p))
            return f;
        found = registry_.find_device(device_id);
        if (!p.token.key_name.empty()) {
            auto policy = registry_.find_policy(p.token.key_name);
            bool primary = policy && sas_signature_valid(p.token, policy->primary_key);
            if (!policy || !(primary || sas_signature_valid(p.token, policy->secondary_key)))
                return unauthorized("signature does not match a key of policy '" + p.token.key_name.substr(0, 64) + "'");
            if (!(policy->permissions & permission::device_connect))
                return unauthorized("policy '" + policy->name + "' lacks the DeviceConnect permission");
            if (!found)
                return unauthorized("device is not registered");
            used = "policy:" + policy->name + ":" + key_digest(primary ? policy->primary_key : policy->secondary_key);
        } else {
            // Checked before anything about the device is revealed: unknown and wrong key look the same.
            bool primary = found && found->authentication == auth_type::sas && sas_signature_valid(p.token, found->primary_key);
            bool secondary = !primary && found && found->authentication == auth_type::sas &&
                             sas_signature_valid(p.token, found->secondary_key);
            if (!primary && !secondary)
                return unauthorized("signature does not match the device's keys");
            used = "key:" + key_digest(primary ? found->primary_key : found->secondary_key);
        }
    }
    if (found->status != device_status::enabled)
        return unauthorized("device is disabled");
    if (device)
        *device = std::move(*found);
    if (credential)
        *credential = std::move(used);
    return {};
}

bool authenticator::credential_still_valid(const device_identity& d, std::string_view credential) const
{
    if (d.status != device_status::enabled)
        return false;
    if (credential.starts_with("key:")) {
        auto digest = credential.substr(4);
        return d.authentication == auth_type::sas &&
               (digest == key_digest(d.primary_key) || digest == key_digest(d.secondary_key));
    }
    if (credential.starts_with("x509:"))
        return d.authentication == auth_type::self_signed && thumbprint_matches(d, credential.substr(5));
    if (credential.starts_with("x509ca:")) {
        // The device CA the chain ended at is still uploaded (not deleted, not replaced).
        auto rest = credential.substr(7);
        auto colon = rest.find(':');
        if (d.authentication != auth_type::certificate_authority || colon == std::string_view::npos)
            return false;
        auto ca = registry_.find_device_ca(rest.substr(colon + 1));
        return ca && ca->thumbprint == rest.substr(0, colon);
    }
    if (credential.starts_with("policy:")) {
        auto rest = credential.substr(7);
        auto colon = rest.find(':');
        auto policy = registry_.find_policy(rest.substr(0, colon));
        if (!policy || !(policy->permissions & permission::device_connect))
            return false;
        auto digest = rest.substr(colon + 1);
        return digest == key_digest(policy->primary_key) || digest == key_digest(policy->secondary_key);
    }
    return false;
}

} // namespace sg::relay
