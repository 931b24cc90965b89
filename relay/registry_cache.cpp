// See registry_cache.hpp.
#include "relay/registry_cache.hpp"

#include <mutex>
#include <unordered_map>

namespace sg::relay {

namespace {

class caching_registry final : public registry, public registry_cache_view {
public:
    caching_registry(registry& inner, std::chrono::seconds ttl, cache_served_callback on_served,
                     std::function<std::chrono::steady_clock::time_point()> now)
        : inner_(&inner), ttl_(ttl), on_served_(std::move(on_served)),
          now_(now ? std::move(now) : [] { return std::chrono::steady_clock::now(); })
    {
    }

    std::optional<device_identity> find_device(std::string_view device_id) override
    {
        return look_up("device", devices_, device_id, [&] { return inner_->find_device(device_id); });
    }
    std::optional<access_policy> find_policy(std::string_view name) override
    {
        return look_up("policy", policies_, name, [&] { return inner_->find_policy(name); });
    }

    registry_result create_device(device_identity& device) override
    {
        forget(device.device_id);
        return inner_->create_device(device);
    }
    registry_result update_device(device_identity& device, std::string_view if_match) override
    {
        forget(device.device_id);
        auto r = inner_->update_device(device, if_match);
        forget(device.device_id);
        return r;
    }
    registry_result delete_device(std::string_view device_id, std::string_view if_match) override
    {
        forget(device_id);
        auto r = inner_->delete_device(device_id, if_match);
        forget(device_id);
        return r;
    }

    std::vector<device_identity> list_devices() override { return inner_->list_devices(); }
    void set_connection_state(std::string_view device_id, bool connected) override
    {
        inner_->set_connection_state(device_id, connected);
    }
    void mark_all_disconnected() override { inner_->mark_all_disconnected(); }
    std::vector<access_policy> list_policies() override { return inner_->list_policies(); }
    registry_result add_device_ca(device_ca& ca, bool replace) override { return inner_->add_device_ca(ca, replace); }
    std::optional<device_ca> find_device_ca(std::string_view name) override { return inner_->find_device_ca(name); }
    std::vector<device_ca> list_device_cas() override { return inner_->list_device_cas(); }
    registry_result delete_device_ca(std::string_view name) override { return inner_->delete_device_ca(name); }
    std::optional<std::string> get_setting(std::string_view key) override { return inner_->get_setting(key); }
    void set_setting(std::string_view key, std::string_view value) override { inner_->set_setting(key, value); }
    void append_audit(const audit_entry& entry) override { inner_->append_audit(entry); }
    std::vector<audit_entry> audit_after(std::int64_t id, std::size_t max_entries) override
    {
        return inner_->audit_after(id, max_entries);
    }
    std::int64_t last_audit_id() override { return inner_->last_audit_id(); }
    std::uint64_t external_change_counter() override { return inner_->external_change_counter(); }
    registry_snapshot export_all() override { return inner_->export_all(); }
    void import_all(const registry_snapshot& s) override
    {
        {
            std::lock_guard lock(mutex_);
            devices_.clear();
            policies_.clear();
        }
        inner_->import_all(s);
    }
    std::string describe() const override { return inner_->describe(); }

    void changes_applied(std::uint64_t counter) override
    {
        std::lock_guard lock(mutex_);
        applied_ = std::max(applied_, counter);
    }
    void forget(std::string_view subject) override
    {
        std::lock_guard lock(mutex_);
        devices_.erase(std::string(subject));
        policies_.erase(std::string(subject));
    }
    std::uint64_t served_from_cache() const override
    {
        std::lock_guard lock(mutex_);
        return served_;
    }

private:
    template <class T>
    struct entry {
        T value;
        std::chrono::steady_clock::time_point fetched;
        std::uint64_t counter = 0; // external_change_counter before the read
    };
    template <class T>
    using table = std::unordered_map<std::string, entry<T>>;

    template <class T, class Read>
    std::optional<T> look_up(std::string_view kind, table<T>& t, std::string_view key, Read read)
    {
        const std::uint64_t before = inner_->external_change_counter();
        std::optional<T> fresh;
        try {
            fresh = read();
        } catch (const registry_unavailable&) {
            std::chrono::seconds age{0};
            auto kept = recall(t, key, age);
            if (!kept)
                throw;
            if (on_served_)
                on_served_(kind, key, age);
            return kept;
        }
        std::lock_guard lock(mutex_);
        if (fresh)
            remember(t, std::string(key), *fresh, before);
        else
            t.erase(std::string(key));
        return fresh;
    }

    template <class T>
    std::optional<T> recall(table<T>& t, std::string_view key, std::chrono::seconds& age)
    {
        const std::uint64_t current = inner_->external_change_counter();
        std::lock_guard lock(mutex_);
        auto it = t.find(std::string(key));
        if (it == t.end() || ttl_.count() <= 0 || now_() - it->second.fetched > ttl_)
            return std::nullopt;
        // A change came in after the read and was not applied: it may be this one's revocation.
        if (it->second.counter != current && applied_ < current)
            return std::nullopt;
        ++served_;
        age = std::chrono::duration_cast<std::chrono::seconds>(now_() - it->second.fetched);
        return it->second.value;
    }

    template <class T>
    void remember(table<T>& t, std::string key, const T& value, std::uint64_t counter)
    {
        auto now = now_();
        t[std::move(key)] = entry<T>{value, now, counter};
        // Entries past the ttl are never served: drop them now and then so the table stays the
        // size of the recently seen devices.
        if (++inserts_ % 1024 == 0)
            std::erase_if(t, [&](const auto& kv) { return now - kv.second.fetched > ttl_; });
    }

    registry* inner_;
    std::chrono::seconds ttl_;
    cache_served_callback on_served_;
    std::function<std::chrono::steady_clock::time_point()> now_;
    mutable std::mutex mutex_;
    table<device_identity> devices_;
    table<access_policy> policies_;
    std::uint64_t applied_ = 0, served_ = 0, inserts_ = 0;
};

} // namespace

std::unique_ptr<registry> make_caching_registry(registry& inner, std::chrono::seconds ttl,
                                                cache_served_callback on_served,
                                                std::function<std::chrono::steady_clock::time_point()> now)
{
    return std::make_unique<caching_registry>(inner, ttl, std::move(on_served), std::move(now));
}

} // namespace sg::relay
