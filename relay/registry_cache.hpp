#pragma once
// Credentials while the shared database is away (--registry-cache-ttl, PostgreSQL only).
// Every look-up still goes to the database first; what it answered is remembered, and only when
// the database cannot be reached (registry_unavailable) is a remembered device or policy served,
// if it is younger than the ttl and no registry change could have touched it since: a change the
// node saw and applied (forget) removes the entry, and while a change notification has come in
// but its audit entries are not read yet, nothing fetched before it is served. So a device
// reconnects and a service authenticates through a short outage, never past a revocation the
// node has seen.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include "relay/registry.hpp"

namespace sg::relay {

class registry_cache_view {
public:
    virtual ~registry_cache_view() = default;
    // The changes up to `counter` (external_change_counter) have been applied with forget().
    virtual void changes_applied(std::uint64_t counter) = 0;
    // A device or policy named `subject` changed (audit subject).
    virtual void forget(std::string_view subject) = 0;
    // Look-ups answered from memory since start (for /metrics).
    virtual std::uint64_t served_from_cache() const = 0;
};

// Told of each look-up answered from memory: "device" or "policy", its name, the entry's age.
using cache_served_callback = std::function<void(std::string_view kind, std::string_view name, std::chrono::seconds age)>;

// In front of `inner` (which must outlive it) for the credential look-ups only (the
// authenticator, a stream's device check): REST reads and every write use `inner` itself. The
// returned registry also implements registry_cache_view.
// `now` is the clock (unit tests pass a fake one).
std::unique_ptr<registry> make_caching_registry(registry& inner, std::chrono::seconds ttl,
                                                cache_served_callback on_served = {},
                                                std::function<std::chrono::steady_clock::time_point()> now = {});

} // namespace sg::relay
