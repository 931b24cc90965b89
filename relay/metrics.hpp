#pragma once
// The relay's counters for /metrics and the status page. Counters are relaxed atomics; the only
// lock is the live-stream table's, taken when a stream starts or ends and when a page or a
// scrape reads it, never per byte (a live stream's bytes are the pump's own counters).
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>
#include "common/error.hpp"

namespace sg {
struct pump_counters;
}

namespace sg::relay {

// Why a stream request (POST) did not produce an accepted stream.
enum class rejection : std::size_t {
    unauthorized,        // 401003
    device_not_found,    // 404001
    device_not_online,   // 404103
    device_disconnected, // 404104: the device's control connection ended before it answered
    throttled,           // 429001
    device_timeout,      // 504101: no answer in time
    rejected_by_device,  // the device answered isAccepted=false (code 0: no error code)
    count_
};

// Where an authentication failed.
enum class auth_endpoint : std::size_t { streams, control, registry, bridge, count_ };

class relay_metrics {
public:
    relay_metrics();

    void stream_rejected(rejection why);
    void auth_failed(auth_endpoint where, const failure& f);
    // limit: the option that was hit (max_streams, max_streams_per_device, stream_rate,
    // device_stream_rate, max_devices, idle_stream_timeout).
    void limit_hit(std::string_view limit);
    void device_connected() { device_connections_.fetch_add(1, std::memory_order_relaxed); }
    // An accepted stream that one side never joined (code 504101 or 404104).
    void stream_not_joined(int code);

    // A stream whose two sides are paired: it is live until stream_ended.
    void stream_started(const std::string& stream_id, const std::string& device_id, const std::string& stream_name,
                        std::chrono::steady_clock::duration setup, std::shared_ptr<const pump_counters> traffic);
    void stream_ended(const std::string& stream_id);
    // Updates each live stream's rate; called about once a second.
    void sample_rates();

    struct live_stream {
        std::string stream_id, device_id, stream_name;
        double age_seconds = 0;
        std::uint64_t bytes_to_device = 0, bytes_to_service = 0;
        double rate_to_device = 0, rate_to_service = 0; // bytes per second over the last sample
    };
    std::vector<live_stream> live_streams() const;

    // Counters and the histogram in the Prometheus text format.
    void write_prometheus(std::string& out) const;

    std::chrono::system_clock::time_point started_at() const { return started_at_; }
    std::uint64_t streams_opened() const { return streams_opened_.load(std::memory_order_relaxed); }

private:
    struct stream_entry {
        std::string device_id, stream_name;
        std::chrono::steady_clock::time_point started;
        std::shared_ptr<const pump_counters> traffic;
        std::chrono::steady_clock::time_point sampled_at;
        std::uint64_t sampled_to_device = 0, sampled_to_service = 0;
        double rate_to_device = 0, rate_to_service = 0;
    };
    static constexpr std::size_t limit_count = 6;
    static constexpr std::size_t bucket_count = 14;
    static const std::array<double, bucket_count> setup_buckets;

    std::chrono::system_clock::time_point started_at_;
    std::atomic<std::uint64_t> streams_opened_{0}, device_connections_{0};
    std::array<std::atomic<std::uint64_t>, static_cast<std::size_t>(rejection::count_)> rejected_{};
    std::array<std::atomic<std::uint64_t>, limit_count> limits_{};
    std::array<std::atomic<std::uint64_t>, 2> not_joined_{}; // 504101, 404104
    std::array<std::atomic<std::uint64_t>, bucket_count + 1> setup_histogram_{};
    std::atomic<std::uint64_t> setup_sum_us_{0};
    struct auth_reasons;
    std::unique_ptr<std::array<std::atomic<std::uint64_t>, 64>> auth_failures_; // endpoint x reason

    mutable std::mutex streams_mutex_;
    std::unordered_map<std::string, stream_entry> streams_;
    std::uint64_t ended_to_device_ = 0, ended_to_service_ = 0; // guarded by streams_mutex_
};

} // namespace sg::relay
