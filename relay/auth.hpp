#pragma once
// Who may do what: checks SAS tokens against the registry's devices and policies.
// No I/O besides registry look-ups; every failure is 401003 with a message saying why.
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>
#include "common/error.hpp"
#include "relay/registry.hpp"

namespace sg::relay {

// What the relay learned from a client certificate presented in the TLS handshake.
struct peer_certificate {
    std::string thumbprint;     // SHA-256 of the DER encoding, upper-case hex
    std::string common_name;
    bool chain_trusted = false; // verifies to one of the device CAs uploaded to the relay
    std::string ca_name, ca_thumbprint; // when trusted: that device CA (its registry name and thumbprint)
};

class authenticator {
public:
    using clock_fn = std::function<std::int64_t()>; // seconds since the epoch

    // host_names: the names a token's resource may start with (the port is optional in it).
    authenticator(registry& reg, std::vector<std::string> host_names,
                  std::chrono::seconds clock_skew = std::chrono::minutes(5), clock_fn now = {});

    // A shared access policy token (skn) whose policy grants `permission` and whose scope
    // covers resource_path (e.g. "/twins/dev1/streams/ssh").
    failure authorize_policy(std::string_view authorization, unsigned permission, std::string_view resource_path) const;

    // A device's control connection: a SAS token signed by the device's own key (no skn) with
    // scope {host}/devices/{id}, or by a policy with DeviceConnect whose scope covers it; or, with
    // no Authorization header, the client certificate (thumbprint, or CA chain + CN = device id).
    // The device must exist and be enabled. On success *device is filled, and *credential names
    // the credential used (a digest, never the key) so a later change can be detected.
    failure authorize_device(std::string_view authorization, std::string_view device_id, device_identity* device,
                             const peer_certificate* certificate = nullptr, std::string* credential = nullptr) const;

    // Whether a connection authorized with `credential` may stay: the device still exists, is
    // enabled, and the key, policy, certificate or device CA it used is still registered.
    bool credential_still_valid(const device_identity& device, std::string_view credential) const;

private:
    struct parsed;
    failure parse(std::string_view authorization, std::string_view resource_path, parsed& out) const;

    registry& registry_;
    std::vector<std::string> host_names_;
    std::chrono::seconds clock_skew_;
    clock_fn now_;
};

} // namespace sg::relay
