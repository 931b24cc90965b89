#pragma once
// Stream admission: concurrent-stream caps and token-bucket rate limits, global and per device.
// No I/O; the clock is passed in so tests can fake it.
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include "common/error.hpp"

namespace sg::relay {

using steady_time = std::chrono::steady_clock::time_point;

class token_bucket {
public:
    token_bucket(double rate_per_second, double burst);
    // Takes one token, or says how long until one is available.
    bool try_take(steady_time now, std::chrono::milliseconds* retry_after = nullptr);
    bool full(steady_time now) const; // no token taken recently (can be forgotten)

private:
    void refill(steady_time now);
    double rate_, burst_, tokens_;
    steady_time last_{};
};

struct stream_limits {
    std::size_t max_streams = 100000;            // concurrent, whole relay
    std::size_t max_streams_per_device = 1000;   // concurrent, one device
    double stream_rate = 2000;                   // new streams per second, whole relay
    double stream_burst = 4000;
    double device_stream_rate = 100;             // new streams per second, one device
    double device_stream_burst = 200;
};

class stream_admission;

// Held while a stream exists (pending or paired); releases its place when destroyed.
class stream_slot {
public:
    stream_slot(std::shared_ptr<stream_admission> owner, std::string device_id);
    ~stream_slot();
    stream_slot(const stream_slot&) = delete;
    stream_slot& operator=(const stream_slot&) = delete;

private:
    std::shared_ptr<stream_admission> owner_;
    std::string device_id_;
};

class stream_admission : public std::enable_shared_from_this<stream_admission> {
public:
    explicit stream_admission(stream_limits limits) : limits_(limits), global_rate_(limits.stream_rate, limits.stream_burst) {}

    struct decision {
        std::unique_ptr<stream_slot> slot;     // set when admitted
        failure refused;                       // 429001 with the reason otherwise
        std::chrono::seconds retry_after{0};   // for rate limits
        std::string_view limit;                // the option that refused it, e.g. "max_streams"
    };
    decision admit(const std::string& device_id, steady_time now);
    std::size_t active() const;

private:
    friend class stream_slot;
    void release(const std::string& device_id);

    struct device_state {
        token_bucket rate;
        std::size_t active = 0;
    };
    stream_limits limits_;
    mutable std::mutex mutex_;
    token_bucket global_rate_;
    std::size_t active_ = 0;
    std::unordered_map<std::string, device_state> devices_;
    steady_time last_prune_{};
};

} // namespace sg::relay
