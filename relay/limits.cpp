#include "relay/limits.hpp"

#include <algorithm>
#include <cmath>

namespace sg::relay {

token_bucket::token_bucket(double rate_per_second, double burst)
    : rate_(std::max(rate_per_second, 0.001)), burst_(std::max(burst, 1.0)), tokens_(burst_)
{
}

void token_bucket::refill(steady_time now)
{
    if (last_ != steady_time{} && now > last_)
        tokens_ = std::min(burst_, tokens_ + std::chrono::duration<double>(now - last_).count() * rate_);
    last_ = now;
}

bool token_bucket::try_take(steady_time now, std::chrono::milliseconds* retry_after)
{
    refill(now);
    if (tokens_ >= 1.0) {
        tokens_ -= 1.0;
        return true;
    }
    if (retry_after)
        *retry_after = std::chrono::milliseconds(static_cast<long>(std::ceil((1.0 - tokens_) / rate_ * 1000.0)));
    return false;
}

bool token_bucket::full(steady_time now) const
{
    double tokens = last_ == steady_time{} ? burst_
                                           : std::min(burst_, tokens_ + std::chrono::duration<double>(now - last_).count() * rate_);
    return tokens >= burst_;
}

stream_slot::stream_slot(std::shared_ptr<stream_admission> owner, std::string device_id)
    : owner_(std::move(owner)), device_id_(std::move(device_id))
{
}

stream_slot::~stream_slot() { owner_->release(device_id_); }

stream_admission::decision stream_admission::admit(const std::string& device_id, steady_time now)
{
    decision d;
    auto throttled = [&](std::string why, std::chrono::milliseconds wait, std::string_view limit) {
        d.limit = limit;
        d.refused = failure{codes::throttled, std::move(why)};
        d.retry_after = std::chrono::seconds(std::max<long>(1, (wait.count() + 999) / 1000));
        return std::move(d);
    };
    std::lock_guard lock(mutex_);
    // Forget devices whose bucket is full and that have no streams, so the map stays small.
    if (now - last_prune_ > std::chrono::seconds(30)) {
        std::erase_if(devices_, [&](auto& entry) { return entry.second.active == 0 && entry.second.rate.full(now); });
        last_prune_ = now;
    }
    if (active_ >= limits_.max_streams)
        return throttled("too many concurrent streams on this relay (limit " + std::to_string(limits_.max_streams) + ")",
                         std::chrono::milliseconds(1000), "max_streams");
    auto it = devices_.try_emplace(device_id, device_state{token_bucket(limits_.device_stream_rate, limits_.device_stream_burst)}).first;
    auto& device = it->second;
    if (device.active >= limits_.max_streams_per_device)
        return throttled("too many concurrent streams to this device (limit " +
                             std::to_string(limits_.max_streams_per_device) + ")",
                         std::chrono::milliseconds(1000), "max_streams_per_device");
    std::chrono::milliseconds wait{0};
    if (!global_rate_.try_take(now, &wait))
        return throttled("stream creation rate limit of the relay reached", wait, "stream_rate");
    if (!device.rate.try_take(now, &wait))
        return throttled("stream creation rate limit of this device reached", wait, "device_stream_rate");
    ++active_;
    ++device.active;
    d.slot = std::make_unique<stream_slot>(shared_from_this(), device_id);
    return d;
}

void stream_admission::release(const std::string& device_id)
{
    std::lock_guard lock(mutex_);
    --active_;
    auto it = devices_.find(device_id);
    if (it != devices_.end() && it->second.active > 0)
        --it->second.active;
}

std::size_t stream_admission::active() const
{
    std::lock_guard lock(mutex_);
    return active_;
}

} // namespace sg::relay
