// The credential cache in front of the PostgreSQL registry (--registry-cache-ttl): a real SQLite
// registry stands for the database, switched "down" (registry_unavailable) by the test, with a
// fake clock.
#include <catch2/catch.hpp>

#include "relay/registry.hpp"
#include "relay/registry_cache.hpp"

#include <atomic>
#include <filesystem>
#include <random>
#include <unistd.h>

using namespace sg::relay;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

struct temp_file {
    fs::path dir = fs::temp_directory_path() / ("sg-cache-test-" + std::to_string(::getpid()) + "-" +
                                                std::to_string(std::random_device{}()));
    temp_file() { fs::create_directories(dir); }
    ~temp_file()
    {
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
};

// A registry that can be made unreachable, with a change counter the test bumps.
class switchable_registry final : public registry {
public:
    explicit switchable_registry(std::unique_ptr<registry> inner) : inner_(std::move(inner)) {}
    std::atomic<bool> down{false};
    std::atomic<std::uint64_t> changes{0};

    std::optional<device_identity> find_device(std::string_view id) override { return up().find_device(id); }
    std::vector<device_identity> list_devices() override { return up().list_devices(); }
    registry_result create_device(device_identity& d) override { return up().create_device(d); }
    registry_result update_device(device_identity& d, std::string_view m) override { return up().update_device(d, m); }
    registry_result delete_device(std::string_view id, std::string_view m) override { return up().delete_device(id, m); }
    void set_connection_state(std::string_view id, bool c) override { up().set_connection_state(id, c); }
    void mark_all_disconnected() override { up().mark_all_disconnected(); }
    std::optional<access_policy> find_policy(std::string_view n) override { return up().find_policy(n); }
    std::vector<access_policy> list_policies() override { return up().list_policies(); }
    registry_result add_device_ca(device_ca& ca, bool replace) override { return up().add_device_ca(ca, replace); }
    std::optional<device_ca> find_device_ca(std::string_view name) override { return up().find_device_ca(name); }
    std::vector<device_ca> list_device_cas() override { return up().list_device_cas(); }
    registry_result delete_device_ca(std::string_view name) override { return up().delete_device_ca(name); }
    std::optional<std::string> get_setting(std::string_view k) override { return up().get_setting(k); }
    void set_setting(std::string_view k, std::string_view v) override { up().set_setting(k, v); }
    void append_audit(const audit_entry& e) override { up().append_audit(e); }
    std::vector<audit_entry> audit_after(std::int64_t id, std::size_t n) override { return up().audit_after(id, n); }
    std::int64_t last_audit_id() override { return up().last_audit_id(); }
    std::uint64_t external_change_counter() override { return changes; }
    registry_snapshot export_all() override { return up().export_all(); }
    void import_all(const registry_snapshot& s) override { up().import_all(s); }
    std::string describe() const override { return "switchable"; }

private:
    registry& up()
    {
        if (down)
            throw registry_unavailable("the relay's registry database is unavailable");
        return *inner_;
    }
    std::unique_ptr<registry> inner_;
};

struct fixture {
    temp_file dir;
    std::unique_ptr<switchable_registry> db;
    std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now();
    std::vector<std::string> served;
    std::unique_ptr<registry> reg;
    registry_cache_view* cache = nullptr;

    explicit fixture(std::chrono::seconds ttl = 60s)
    {
        db = std::make_unique<switchable_registry>(open_sqlite_registry(dir.dir / "registry.db"));
        reg = make_caching_registry(
            *db, ttl,
            [this](std::string_view kind, std::string_view name, std::chrono::seconds age) {
                served.push_back(std::string(kind) + " " + std::string(name) + " " + std::to_string(age.count()));
            },
            [this] { return now; });
        cache = dynamic_cast<registry_cache_view*>(reg.get());
        REQUIRE(cache);
    }
    device_identity create(const std::string& id)
    {
        device_identity d;
        d.device_id = id;
        REQUIRE(reg->create_device(d) == registry_result::ok);
        return d;
    }
};

} // namespace

TEST_CASE("registry cache: while the database answers, every look-up is the database's", "[registry_cache]")
{
    fixture f;
    auto d = f.create("dev1");
    REQUIRE(f.reg->find_device("dev1")->primary_key == d.primary_key);
    d.primary_key = "";
    d.secondary_key = "";
    auto renewed = d;
    REQUIRE(f.db->update_device(renewed, "*") == registry_result::ok); // another node, past the cache
    CHECK(f.reg->find_device("dev1")->primary_key == renewed.primary_key);
    CHECK(f.reg->find_device("nobody") == std::nullopt);
    CHECK(f.cache->served_from_cache() == 0);
    CHECK(f.served.empty());
}

TEST_CASE("registry cache: with the database down, what was read within the ttl still answers", "[registry_cache]")
{
    fixture f(60s);
    auto d = f.create("dev1");
    REQUIRE(f.reg->find_device("dev1"));
    REQUIRE(f.reg->find_policy("service"));
    f.db->down = true;

    f.now += 59s;
    auto kept = f.reg->find_device("dev1");
    REQUIRE(kept);
    CHECK(kept->primary_key == d.primary_key);
    CHECK(f.reg->find_policy("service")->name == "service");
    CHECK(f.cache->served_from_cache() == 2);
    CHECK(f.served == std::vector<std::string>{"device dev1 59", "policy service 59"});
    // Never read: the outage is the caller's answer (503002).
    CHECK_THROWS_AS(f.reg->find_device("dev2"), registry_unavailable);
    // Writes are never cached.
    device_identity other;
    other.device_id = "dev3";
    CHECK_THROWS_AS(f.reg->create_device(other), registry_unavailable);

    f.now += 2s; // 61 s after the read
    CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
    CHECK_THROWS_AS(f.reg->find_policy("service"), registry_unavailable);
}

TEST_CASE("registry cache: never past a change the node has seen", "[registry_cache]")
{
    fixture f;
    f.create("dev1");
    f.create("dev2");
    REQUIRE(f.reg->find_device("dev1"));
    REQUIRE(f.reg->find_device("dev2"));

    SECTION("a change applied for a device forgets it, and only it")
    {
        f.db->changes = 1;
        f.cache->forget("dev1");
        f.cache->changes_applied(1);
        f.db->down = true;
        CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
        CHECK(f.reg->find_device("dev2"));
    }
    SECTION("a change notified but not yet read: nothing read before it answers")
    {
        f.db->changes = 1; // the notification came; the audit trail could not be read
        f.db->down = true;
        CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
        CHECK_THROWS_AS(f.reg->find_device("dev2"), registry_unavailable);
    }
    SECTION("read after the change: that read is current")
    {
        f.db->changes = 1;
        REQUIRE(f.reg->find_device("dev2"));
        f.db->down = true;
        CHECK(f.reg->find_device("dev2"));
        CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
    }
    SECTION("this node's own update or delete forgets the device")
    {
        auto d = *f.reg->find_device("dev1");
        d.status = device_status::disabled;
        REQUIRE(f.reg->update_device(d, "*") == registry_result::ok);
        REQUIRE(f.reg->delete_device("dev2", "*") == registry_result::ok);
        f.db->down = true;
        CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
        CHECK_THROWS_AS(f.reg->find_device("dev2"), registry_unavailable);
    }
    SECTION("a device found gone is not kept")
    {
        REQUIRE(f.db->delete_device("dev1", "*") == registry_result::ok); // another node
        CHECK(f.reg->find_device("dev1") == std::nullopt);
        f.db->down = true;
        CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
    }
}

TEST_CASE("registry cache: a ttl of 0 serves nothing from memory", "[registry_cache]")
{
    fixture f(0s);
    f.create("dev1");
    REQUIRE(f.reg->find_device("dev1"));
    f.db->down = true;
    CHECK_THROWS_AS(f.reg->find_device("dev1"), registry_unavailable);
}
