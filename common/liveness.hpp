#pragma once
// Keepalive settings for every WebSocket a process opens or accepts (--ping-interval).
#include <chrono>

namespace sg {

struct liveness {
    std::chrono::seconds handshake_timeout{30};
    // A silent peer is pinged every ping_interval and declared dead after two intervals.
    std::chrono::seconds ping_interval{20};
};

// The process-wide setting, set once at start-up before any connection exists.
void set_default_liveness(const liveness& l);
const liveness& default_liveness();

} // namespace sg
