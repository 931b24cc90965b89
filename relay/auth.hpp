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

class authenticator {
public:
    using clock_fn = std::function<std::int64_t()>; // seconds since the epoch

    // host_names: the names a token's resource may start with (the port is optional in it).
    authenticator(registry& reg, std::vector<std::string> host_names,
                  std::chrono::seconds clock_skew = std::chrono::minutes(5), clock_fn now = {});

    // A shared access policy token (skn) whose policy grants `permission` and whose scope
    // covers resource_path (e.g. "/twins/dev1/streams/ssh").
    failure authorize_policy(std::string_view authorization, unsigned permission, std::string_view resource_path) const;

    // A device's control connection: signed by the device's own key (no skn) with scope
    // {host}/devices/{id}, or by a policy with DeviceConnect whose scope covers it. The device
    // must exist and be enabled. On success *device is filled.
    failure authorize_device(std::string_view authorization, std::string_view device_id, device_identity* device) const;

private:
    struct parsed;
    failure parse(std::string_view authorization, std::string_view resource_path, parsed& out) const;

    registry& registry_;
    std::vector<std::string> host_names_;
    std::chrono::seconds clock_skew_;
    clock_fn now_;
};

} // namespace sg::relay
