#include "relay/metrics.hpp"

#include "common/prometheus.hpp"
#include "common/pump.hpp"

namespace sg::relay {

namespace {

namespace prom = sg::prometheus;

struct rejection_label {
    const char* code;
    const char* reason;
};
// Indexed by `rejection`.
constexpr std::array<rejection_label, static_cast<std::size_t>(rejection::count_)> rejection_labels{{
    {"401003", "unauthorized"},
    {"404001", "device_not_found"},
    {"404103", "device_not_online"},
    {"404104", "device_disconnected"},
    {"429001", "throttled"},
    {"504101", "device_timeout"},
    {"0", "rejected_by_device"},
}};

constexpr std::array<const char*, 6> limit_names{"max_streams",        "max_streams_per_device", "stream_rate",
                                                 "device_stream_rate", "max_devices",            "idle_stream_timeout"};

constexpr std::array<const char*, static_cast<std::size_t>(auth_endpoint::count_)> endpoint_names{"streams", "control",
                                                                                                  "registry", "bridge"};

// Fixed reasons, so a label never carries free text from a request.
constexpr std::array<const char*, 11> auth_reason_names{
    "missing_credentials", "malformed_token",  "token_expired",   "wrong_scope",     "bad_signature", "missing_permission",
    "device_disabled",     "unknown_device",   "bad_certificate", "bad_stream_token", "other"};

// By the start of the messages relay/auth.cpp and bridge.cpp give (the rest may hold request text).
std::size_t classify_auth_failure(std::string_view m)
{
    auto starts = [&](std::string_view s) { return m.starts_with(s); };
    if (starts("missing "))
        return 0;
    if (starts("malformed "))
        return 1;
    if (m == "token expired")
        return 2;
    if (starts("token scope "))
        return 3;
    if (starts("signature does not match"))
        return 4;
    if (starts("a device key cannot") || starts("policy '"))
        return 5;
    if (m == "device is disabled")
        return 6;
    if (m == "device is not registered")
        return 7;
    if (starts("client certificate") || starts("device is registered for SAS"))
        return 8;
    if (starts("no such stream") || starts("token is not valid") || starts("token was already used"))
        return 9;
    return 10;
}

} // namespace

const std::array<double, relay_metrics::bucket_count> relay_metrics::setup_buckets{
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

relay_metrics::relay_metrics()
    : started_at_(std::chrono::system_clock::now()),
      auth_failures_(std::make_unique<std::array<std::atomic<std::uint64_t>, 64>>())
{
    static_assert(endpoint_names.size() * auth_reason_names.size() <= 64);
    static_assert(limit_names.size() == limit_count);
}

void relay_metrics::stream_rejected(rejection why)
{
    rejected_[static_cast<std::size_t>(why)].fetch_add(1, std::memory_order_relaxed);
}

void relay_metrics::auth_failed(auth_endpoint where, const failure& f)
{
    auto index = static_cast<std::size_t>(where) * auth_reason_names.size() + classify_auth_failure(f.message);
    (*auth_failures_)[index].fetch_add(1, std::memory_order_relaxed);
}

void relay_metrics::limit_hit(std::string_view limit)
{
    for (std::size_t i = 0; i < limit_names.size(); ++i)
        if (limit == limit_names[i])
            limits_[i].fetch_add(1, std::memory_order_relaxed);
}

void relay_metrics::stream_not_joined(int code)
{
    not_joined_[code == codes::device_connection_closed ? 1 : 0].fetch_add(1, std::memory_order_relaxed);
}

void relay_metrics::stream_started(const std::string& stream_id, const std::string& device_id,
                                   const std::string& stream_name, std::chrono::steady_clock::duration setup,
                                   std::shared_ptr<const pump_counters> traffic)
{
    streams_opened_.fetch_add(1, std::memory_order_relaxed);
    double seconds = std::chrono::duration<double>(setup).count();
    std::size_t bucket = 0;
    while (bucket < setup_buckets.size() && seconds > setup_buckets[bucket])
        ++bucket;
    setup_histogram_[bucket].fetch_add(1, std::memory_order_relaxed);
    setup_sum_us_.fetch_add(static_cast<std::uint64_t>(std::max(0.0, seconds) * 1e6), std::memory_order_relaxed);

    auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(streams_mutex_);
    streams_[stream_id] = stream_entry{device_id, stream_name, now, std::move(traffic), now, 0, 0, 0, 0};
}

void relay_metrics::stream_ended(const std::string& stream_id)
{
    std::lock_guard lock(streams_mutex_);
    auto it = streams_.find(stream_id);
    if (it == streams_.end())
        return;
    ended_to_device_ += it->second.traffic->a_to_b.load(std::memory_order_relaxed);
    ended_to_service_ += it->second.traffic->b_to_a.load(std::memory_order_relaxed);
    streams_.erase(it);
}

void relay_metrics::sample_rates()
{
    auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(streams_mutex_);
    for (auto& [id, s] : streams_) {
        double dt = std::chrono::duration<double>(now - s.sampled_at).count();
        if (dt < 0.5)
            continue;
        std::uint64_t to_device = s.traffic->a_to_b.load(std::memory_order_relaxed);
        std::uint64_t to_service = s.traffic->b_to_a.load(std::memory_order_relaxed);
        s.rate_to_device = static_cast<double>(to_device - s.sampled_to_device) / dt;
        s.rate_to_service = static_cast<double>(to_service - s.sampled_to_service) / dt;
        s.sampled_to_device = to_device;
        s.sampled_to_service = to_service;
        s.sampled_at = now;
    }
}

std::vector<relay_metrics::live_stream> relay_metrics::live_streams() const
{
    auto now = std::chrono::steady_clock::now();
    std::vector<live_stream> out;
    std::lock_guard lock(streams_mutex_);
    out.reserve(streams_.size());
    for (const auto& [id, s] : streams_) {
        out.push_back(live_stream{id, s.device_id, s.stream_name, std::chrono::duration<double>(now - s.started).count(),
                                  s.traffic->a_to_b.load(std::memory_order_relaxed),
                                  s.traffic->b_to_a.load(std::memory_order_relaxed), s.rate_to_device, s.rate_to_service});
    }
    return out;
}

void relay_metrics::write_prometheus(std::string& out) const
{
    auto load = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };

    prom::family(out, "streamgate_process_start_time_seconds", "gauge", "Start time of the relay since the Unix epoch.");
    prom::sample(out, "streamgate_process_start_time_seconds", {},
                 std::chrono::duration<double>(started_at_.time_since_epoch()).count());

    prom::family(out, "streamgate_device_connections_total", "counter", "Device control connections accepted.");
    prom::sample(out, "streamgate_device_connections_total", {}, load(device_connections_));

    prom::family(out, "streamgate_streams_opened_total", "counter", "Streams whose two sides were paired.");
    prom::sample(out, "streamgate_streams_opened_total", {}, load(streams_opened_));

    prom::family(out, "streamgate_streams_rejected_total", "counter",
                 "Stream requests that produced no accepted stream, by error code and reason (code 0: the device rejected it).");
    for (std::size_t i = 0; i < rejection_labels.size(); ++i)
        prom::sample(out, "streamgate_streams_rejected_total",
                     {{"code", rejection_labels[i].code}, {"reason", rejection_labels[i].reason}}, load(rejected_[i]));

    prom::family(out, "streamgate_streams_not_joined_total", "counter",
                 "Accepted streams given up because one side never joined the streaming endpoint.");
    prom::sample(out, "streamgate_streams_not_joined_total", {{"code", "504101"}, {"reason", "side_never_joined"}},
                 load(not_joined_[0]));
    prom::sample(out, "streamgate_streams_not_joined_total", {{"code", "404104"}, {"reason", "device_disconnected"}},
                 load(not_joined_[1]));

    prom::family(out, "streamgate_auth_failures_total", "counter",
                 "Refused credentials, by endpoint and reason (series appear at their first failure).");
    for (std::size_t e = 0; e < endpoint_names.size(); ++e)
        for (std::size_t r = 0; r < auth_reason_names.size(); ++r) {
            auto n = load((*auth_failures_)[e * auth_reason_names.size() + r]);
            if (n)
                prom::sample(out, "streamgate_auth_failures_total", {{"endpoint", endpoint_names[e]}, {"reason", auth_reason_names[r]}}, n);
        }

    prom::family(out, "streamgate_limits_hit_total", "counter", "Requests refused or streams closed by a limit, by the option that set it.");
    for (std::size_t i = 0; i < limit_names.size(); ++i)
        prom::sample(out, "streamgate_limits_hit_total", {{"limit", limit_names[i]}}, load(limits_[i]));

    std::array<std::uint64_t, bucket_count + 1> buckets{};
    for (std::size_t i = 0; i < buckets.size(); ++i)
        buckets[i] = load(setup_histogram_[i]);
    prom::family(out, "streamgate_stream_setup_seconds", "histogram",
                 "Time from a stream request (POST) to both sides paired on the streaming endpoint.");
    prom::histogram(out, "streamgate_stream_setup_seconds",
                    {setup_buckets.data(), buckets.data(), setup_buckets.size(), load(setup_sum_us_) / 1e6});

    std::uint64_t to_device = 0, to_service = 0;
    {
        std::lock_guard lock(streams_mutex_);
        to_device = ended_to_device_;
        to_service = ended_to_service_;
        for (const auto& [id, s] : streams_) {
            to_device += s.traffic->a_to_b.load(std::memory_order_relaxed);
            to_service += s.traffic->b_to_a.load(std::memory_order_relaxed);
        }
    }
    prom::family(out, "streamgate_stream_bytes_total", "counter", "Stream payload bytes the relay forwarded, by direction.");
    prom::sample(out, "streamgate_stream_bytes_total", {{"direction", "service_to_device"}}, to_device);
    prom::sample(out, "streamgate_stream_bytes_total", {{"direction", "device_to_service"}}, to_service);
}

} // namespace sg::relay
