// The registry contract, run against both backends with the same test bodies: the embedded
// SQLite file and a real PostgreSQL 15 server started for the test (tests/support/pg_server).
#include <catch2/catch.hpp>

#include "common/crypto.hpp"
#include "../support/pg_server.hpp"
#include "relay/registry.hpp"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>
#include <unistd.h>

using namespace sg::relay;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// One server per test process (ctest runs each test case in its own process).
sgtest::pg_server& server()
{
    static sgtest::pg_server s;
    return s;
}

std::string fresh_database()
{
    static std::atomic<int> counter{0};
    return server().create_database("contract_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
}

// One store, opened as many times as a test wants (two objects = two processes' view).
struct store {
    std::string backend;
    fs::path dir;
    std::string url;

    explicit store(std::string b) : backend(std::move(b))
    {
        if (backend == "postgresql") {
            url = fresh_database();
        } else {
            dir = fs::temp_directory_path() / ("sg-contract-" + std::to_string(::getpid()) + "-" +
                                               std::to_string(std::random_device{}()));
            fs::create_directories(dir);
        }
    }
    ~store()
    {
        std::error_code ec;
        if (!dir.empty())
            fs::remove_all(dir, ec);
    }
    std::unique_ptr<registry> open() const
    {
        return backend == "postgresql" ? open_postgres_registry(url) : open_sqlite_registry(dir / "registry.db");
    }
};

bool is_key(const std::string& k)
{
    auto raw = sg::base64_decode(k);
    return raw && raw->size() == 32;
}

device_identity sas_device(const std::string& id)
{
    device_identity d;
    d.device_id = id;
    return d;
}

// The registry stores device CAs as given (x509_auth.hpp checks them first).
device_ca some_ca(const std::string& name, char fill)
{
    return {name, "-----BEGIN CERTIFICATE-----\n" + std::string(64, fill) + "\n-----END CERTIFICATE-----\n",
            std::string(64, fill), ""};
}

bool counter_moves(registry& reg, std::uint64_t from, std::chrono::milliseconds within)
{
    auto deadline = std::chrono::steady_clock::now() + within;
    while (std::chrono::steady_clock::now() < deadline) {
        if (reg.external_change_counter() != from)
            return true;
        std::this_thread::sleep_for(20ms);
    }
    return false;
}

} // namespace

TEST_CASE("registry contract: devices, etags and generation ids", "[registry][contract]")
{
    auto backend = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    INFO("backend " << backend);
    store st(backend);
    auto reg = st.open();

    auto d = sas_device("dev-1");
    REQUIRE(reg->create_device(d) == registry_result::ok);
    CHECK(d.generation_id.size() == 19);
    CHECK_FALSE(d.etag.empty());
    CHECK(is_key(d.primary_key));
    CHECK(is_key(d.secondary_key));
    CHECK(d.primary_key != d.secondary_key);
    CHECK_FALSE(d.connected);
    auto again = sas_device("dev-1");
    CHECK(reg->create_device(again) == registry_result::already_exists);

    auto x509 = sas_device("dev-0 x509");
    x509.authentication = auth_type::self_signed;
    x509.primary_thumbprint = std::string(64, 'A');
    x509.secondary_thumbprint = std::string(64, 'B');
    x509.status = device_status::disabled;
    x509.status_reason = "it's \"quoted\"; DROP TABLE devices; --";
    REQUIRE(reg->create_device(x509) == registry_result::ok);
    CHECK(x509.primary_key.empty());

    // A second object (another process) sees exactly what was stored.
    auto other = st.open();
    auto found = other->find_device("dev-1");
    REQUIRE(found);
    CHECK(found->etag == d.etag);
    CHECK(found->generation_id == d.generation_id);
    CHECK(found->primary_key == d.primary_key);
    CHECK(found->status_updated_time == d.status_updated_time);
    auto found_x = other->find_device("dev-0 x509");
    REQUIRE(found_x);
    CHECK(found_x->authentication == auth_type::self_signed);
    CHECK(found_x->status == device_status::disabled);
    CHECK(found_x->status_reason == x509.status_reason);
    CHECK(found_x->secondary_thumbprint == std::string(64, 'B'));
    CHECK_FALSE(other->find_device("DEV-1")); // ids are case-sensitive
    auto all = other->list_devices();
    REQUIRE(all.size() == 2);
    CHECK(all[0].device_id == "dev-0 x509"); // ordered by id
    CHECK(all[1].device_id == "dev-1");

    // Update with the right etag, then with the stale one (412 in REST).
    auto u = *found;
    u.status = device_status::disabled;
    u.primary_key.clear(); // omitted keys are kept
    REQUIRE(other->update_device(u, d.etag) == registry_result::ok);
    CHECK(u.etag != d.etag);
    CHECK(u.generation_id == d.generation_id);
    CHECK(u.primary_key == d.primary_key);
    auto stale = *found;
    CHECK(reg->update_device(stale, d.etag) == registry_result::etag_mismatch);
    CHECK(reg->find_device("dev-1")->status == device_status::disabled);
    auto renewed = *reg->find_device("dev-1");
    renewed.primary_key = sg::random_key_base64();
    REQUIRE(reg->update_device(renewed, "*") == registry_result::ok);
    CHECK(other->find_device("dev-1")->primary_key == renewed.primary_key);
    auto missing = sas_device("nobody");
    CHECK(reg->update_device(missing, "") == registry_result::not_found);

    // Connection state.
    reg->set_connection_state("dev-1", true);
    CHECK(other->find_device("dev-1")->connected);
    CHECK(other->find_device("dev-1")->etag == renewed.etag); // not a change of the identity
    reg->mark_all_disconnected();
    CHECK_FALSE(other->find_device("dev-1")->connected);

    // Delete: etag checked, then gone.
    CHECK(reg->delete_device("dev-1", "wrong") == registry_result::etag_mismatch);
    CHECK(reg->delete_device("dev-1", renewed.etag) == registry_result::ok);
    CHECK(reg->delete_device("dev-1", "") == registry_result::not_found);
    CHECK_FALSE(other->find_device("dev-1"));
    CHECK(other->list_devices().size() == 1);
}

TEST_CASE("registry contract: default policies, settings and the audit trail", "[registry][contract]")
{
    auto backend = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    INFO("backend " << backend);
    store st(backend);
    auto reg = st.open();
    using namespace permission;
    const std::pair<const char*, unsigned> expected[] = {
        {"device", device_connect},
        {"iothubowner", registry_read | registry_write | service_connect | device_connect},
        {"registryRead", registry_read},
        {"registryReadWrite", registry_read | registry_write},
        {"service", service_connect},
    };
    auto policies = reg->list_policies();
    REQUIRE(policies.size() == 5);
    for (std::size_t i = 0; i < 5; ++i) {
        CHECK(policies[i].name == expected[i].first);
        CHECK(policies[i].permissions == expected[i].second);
        CHECK(is_key(policies[i].primary_key));
        CHECK(policies[i].primary_key != policies[i].secondary_key);
    }
    CHECK_FALSE(reg->find_policy("IoTHubOwner"));
    // Opening again keeps the keys (no second set of defaults); another store has other keys.
    auto reopened = st.open();
    CHECK(reopened->find_policy("service")->primary_key == reg->find_policy("service")->primary_key);
    CHECK(reopened->list_policies().size() == 5);
    store elsewhere(backend);
    CHECK(elsewhere.open()->find_policy("iothubowner")->primary_key != reg->find_policy("iothubowner")->primary_key);

    CHECK_FALSE(reg->get_setting("host_name"));
    reg->set_setting("host_name", "relay.example:8443");
    reg->set_setting("host_name", "relay.example:9443");
    CHECK(reopened->get_setting("host_name") == "relay.example:9443");

    CHECK(reg->last_audit_id() == 0);
    reg->append_audit({0, {}, "admin-cli uid=0", "device-create", "a", "auth=sas"});
    reopened->append_audit({0, {}, "relay rest peer=127.0.0.1:1", "device-delete", "b", ""});
    auto entries = reg->audit_after(0, 10);
    REQUIRE(entries.size() == 2);
    CHECK(entries[0].id < entries[1].id);
    CHECK(entries[0].actor == "admin-cli uid=0");
    CHECK(entries[0].time.size() == 20);
    CHECK(entries[1].action == "device-delete");
    CHECK(reg->last_audit_id() == entries[1].id);
    CHECK(reg->audit_after(entries[0].id, 10).size() == 1);
    CHECK(reg->audit_after(0, 1).size() == 1);
}

TEST_CASE("registry contract: another object's writes move the change counter within a second",
          "[registry][contract]")
{
    auto backend = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    INFO("backend " << backend);
    store st(backend);
    auto relay_view = st.open();
    auto admin_view = st.open();
    auto seen = relay_view->external_change_counter();

    auto d = sas_device("watched");
    REQUIRE(admin_view->create_device(d) == registry_result::ok);
    CHECK(counter_moves(*relay_view, seen, 1s));

    seen = relay_view->external_change_counter();
    d.primary_key = sg::random_key_base64();
    REQUIRE(admin_view->update_device(d, "") == registry_result::ok);
    CHECK(counter_moves(*relay_view, seen, 1s));

    seen = relay_view->external_change_counter();
    admin_view->append_audit({0, {}, "admin-cli", "device-update", "watched", ""});
    CHECK(counter_moves(*relay_view, seen, 1s));

    seen = relay_view->external_change_counter();
    REQUIRE(admin_view->delete_device("watched", "") == registry_result::ok);
    CHECK(counter_moves(*relay_view, seen, 1s));

    // Its own writes are not external changes.
    seen = relay_view->external_change_counter();
    auto own = sas_device("own");
    REQUIRE(relay_view->create_device(own) == registry_result::ok);
    relay_view->append_audit({0, {}, "relay rest", "device-create", "own", ""});
    CHECK_FALSE(counter_moves(*relay_view, seen, 300ms));
}

TEST_CASE("registry contract: export and import keep every stored value", "[registry][contract]")
{
    auto from = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    auto to = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    INFO(from << " -> " << to);
    store a(from), b(to);
    auto source = a.open();
    auto dev = sas_device("keep-me");
    REQUIRE(source->create_device(dev) == registry_result::ok);
    source->set_connection_state("keep-me", true);
    source->set_setting("hub_name", "streamgate");
    source->append_audit({0, {}, "admin-cli", "device-create", "keep-me", "auth=sas"});
    source->append_audit({0, {}, "admin-cli", "device-update", "keep-me", "renew-key=primary"});
    auto snap = source->export_all();
    REQUIRE(snap.devices.size() == 1);
    REQUIRE(snap.policies.size() == 5);
    REQUIRE(snap.audit.size() == 2);
    auto ca = some_ca("fleet-ca", 'C');
    REQUIRE(source->add_device_ca(ca, false) == registry_result::ok);
    snap = source->export_all();
    REQUIRE(snap.device_cas.size() == 1);

    auto target = b.open();
    auto stale = some_ca("replaced-by-import", 'D');
    REQUIRE(target->add_device_ca(stale, false) == registry_result::ok);
    target->import_all(snap);
    auto copy = b.open()->export_all();
    REQUIRE(copy.devices.size() == 1);
    const auto& c = copy.devices[0];
    CHECK(c.device_id == dev.device_id);
    CHECK(c.generation_id == dev.generation_id);
    CHECK(c.etag == dev.etag);
    CHECK(c.primary_key == dev.primary_key);
    CHECK(c.secondary_key == dev.secondary_key);
    CHECK(c.connected);
    CHECK(c.status_updated_time == dev.status_updated_time);
    REQUIRE(copy.policies.size() == 5);
    for (std::size_t i = 0; i < 5; ++i) {
        CHECK(copy.policies[i].name == snap.policies[i].name);
        CHECK(copy.policies[i].primary_key == snap.policies[i].primary_key);
        CHECK(copy.policies[i].secondary_key == snap.policies[i].secondary_key);
    }
    CHECK(copy.settings == snap.settings);
    REQUIRE(copy.audit.size() == 2);
    CHECK(copy.audit[1].id == snap.audit[1].id);
    CHECK(copy.audit[1].time == snap.audit[1].time);
    CHECK(copy.audit[1].detail == "renew-key=primary");
    REQUIRE(copy.device_cas.size() == 1); // the target's own CA is gone
    CHECK(copy.device_cas[0].name == "fleet-ca");
    CHECK(copy.device_cas[0].pem == ca.pem);
    CHECK(copy.device_cas[0].thumbprint == ca.thumbprint);
    CHECK(copy.device_cas[0].added_time == ca.added_time);
    // New entries continue after the imported ids.
    target->append_audit({0, {}, "admin-cli", "device-delete", "keep-me", ""});
    CHECK(target->last_audit_id() > snap.audit[1].id);
}

TEST_CASE("registry contract: concurrent writers, one etag wins, one object shared by threads", "[registry][contract]")
{
    auto backend = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    INFO("backend " << backend);
    store st(backend);
    auto setup = st.open();
    auto d = sas_device("contended");
    REQUIRE(setup->create_device(d) == registry_result::ok);

    // Four processes' views update with the same etag at once: exactly one wins, the others 412.
    std::vector<std::unique_ptr<registry>> views;
    for (int i = 0; i < 4; ++i)
        views.push_back(st.open());
    std::atomic<int> won{0}, refused{0};
    {
        std::vector<std::thread> writers;
        for (auto& v : views)
            writers.emplace_back([&, reg = v.get()] {
                auto mine = d;
                mine.primary_key = sg::random_key_base64();
                auto r = reg->update_device(mine, d.etag);
                (r == registry_result::ok ? won : refused)++;
            });
        for (auto& t : writers)
            t.join();
    }
    CHECK(won == 1);
    CHECK(refused == 3);

    // One object used by several threads at once (the relay's I/O threads) stays consistent.
    auto shared = st.open();
    std::atomic<int> errors{0};
    {
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&, t] {
                for (int i = 0; i < 50; ++i) {
                    auto id = "t" + std::to_string(t) + "-" + std::to_string(i);
                    auto dev = sas_device(id);
                    if (shared->create_device(dev) != registry_result::ok || !shared->find_device(id) ||
                        !shared->find_policy("service"))
                        ++errors;
                    shared->set_connection_state(id, i % 2 == 0);
                }
            });
        for (auto& t : threads)
            t.join();
    }
    CHECK(errors == 0);
    CHECK(shared->list_devices().size() == 201);
}

TEST_CASE("registry contract: device CAs, shared by every object and noticed as changes", "[registry][contract]")
{
    auto backend = GENERATE(as<std::string>{}, "sqlite", "postgresql");
    INFO("backend " << backend);
    store st(backend);
    auto admin = st.open();
    auto relay_view = st.open();
    CHECK(relay_view->list_device_cas().empty());
    auto seen = relay_view->external_change_counter();

    auto b = some_ca("b-ca", 'B');
    REQUIRE(admin->add_device_ca(b, false) == registry_result::ok);
    CHECK(b.added_time.size() == 20); // set when empty, ISO 8601 UTC
    CHECK(counter_moves(*relay_view, seen, 1s));
    auto a = some_ca("a.ca_1-x", 'A');
    a.added_time = "2026-01-02T03:04:05Z"; // kept as given (import)
    REQUIRE(admin->add_device_ca(a, false) == registry_result::ok);

    auto found = relay_view->find_device_ca("b-ca");
    REQUIRE(found);
    CHECK(found->pem == b.pem);
    CHECK(found->thumbprint == b.thumbprint);
    CHECK(found->added_time == b.added_time);
    CHECK_FALSE(relay_view->find_device_ca("B-CA")); // names are case-sensitive
    auto all = relay_view->list_device_cas();
    REQUIRE(all.size() == 2);
    CHECK(all[0].name == "a.ca_1-x"); // ordered by name
    CHECK(all[0].added_time == "2026-01-02T03:04:05Z");
    CHECK(all[1].name == "b-ca");

    // A name in use: refused, unless replacing.
    auto other = some_ca("b-ca", 'E');
    CHECK(admin->add_device_ca(other, false) == registry_result::already_exists);
    CHECK(relay_view->find_device_ca("b-ca")->thumbprint == b.thumbprint);
    seen = relay_view->external_change_counter();
    REQUIRE(admin->add_device_ca(other, true) == registry_result::ok);
    CHECK(counter_moves(*relay_view, seen, 1s));
    CHECK(relay_view->find_device_ca("b-ca")->thumbprint == std::string(64, 'E'));
    CHECK(relay_view->list_device_cas().size() == 2);

    // Deleted: gone for every object, and noticed.
    seen = relay_view->external_change_counter();
    CHECK(admin->delete_device_ca("b-ca") == registry_result::ok);
    CHECK(admin->delete_device_ca("b-ca") == registry_result::not_found);
    CHECK(counter_moves(*relay_view, seen, 1s));
    CHECK_FALSE(relay_view->find_device_ca("b-ca"));
    CHECK(st.open()->list_device_cas().size() == 1);
}
