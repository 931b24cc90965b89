#include <catch2/catch.hpp>

#include "common/crypto.hpp"
#include "relay/registry.hpp"

#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <sys/stat.h>
#include <unistd.h>

using namespace sg::relay;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
    fs::path path;
    temp_dir()
    {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() /
               ("sg-registry-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
                std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~temp_dir()
    {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

unsigned mode_of(const fs::path& p)
{
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
}

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

} // namespace

TEST_CASE("default policies are created with fresh keys", "[registry]")
{
    temp_dir dir;
    auto reg = open_sqlite_registry(dir.path / "registry.db");
    auto policies = reg->list_policies();
    REQUIRE(policies.size() == 5);

    using namespace permission;
    const std::pair<const char*, unsigned> expected[] = {
        {"iothubowner", registry_read | registry_write | service_connect | device_connect},
        {"service", service_connect},
        {"device", device_connect},
        {"registryRead", registry_read},
        {"registryReadWrite", registry_read | registry_write},
    };
    for (const auto& [name, perms] : expected) {
        auto p = reg->find_policy(name);
        REQUIRE(p);
        CHECK(p->permissions == perms);
        CHECK(is_key(p->primary_key));
        CHECK(is_key(p->secondary_key));
        CHECK(p->primary_key != p->secondary_key);
    }
    CHECK_FALSE(reg->find_policy("IoTHubOwner"));
    CHECK(reg->find_policy("service")->primary_key != reg->find_policy("device")->primary_key);

    // Another database gets other keys.
    temp_dir other;
    auto reg2 = open_sqlite_registry(other.path / "registry.db");
    CHECK(reg2->find_policy("iothubowner")->primary_key != reg->find_policy("iothubowner")->primary_key);
}

TEST_CASE("permissions and enums print and parse", "[registry]")
{
    using namespace permission;
    CHECK(permissions_to_string(registry_read | service_connect) == "RegistryRead, ServiceConnect");
    CHECK(permissions_to_string(0).empty());
    CHECK(to_string(auth_type::self_signed) == "selfSigned");
    CHECK(parse_auth_type("certificateAuthority") == auth_type::certificate_authority);
    CHECK_FALSE(parse_auth_type("SAS"));
    CHECK(parse_device_status("disabled") == device_status::disabled);
    CHECK_FALSE(parse_device_status("Enabled"));
    auto now = utc_now_iso8601();
    CHECK(now.size() == 20);
    CHECK(now[10] == 'T');
    CHECK(now.back() == 'Z');
}

TEST_CASE("devices: create, find, list, update, delete", "[registry]")
{
    temp_dir dir;
    auto reg = open_sqlite_registry(dir.path / "registry.db");

    auto d = sas_device("dev-1");
    REQUIRE(reg->create_device(d) == registry_result::ok);
    CHECK_FALSE(d.generation_id.empty());
    CHECK_FALSE(d.etag.empty());
    CHECK(is_key(d.primary_key));
    CHECK(is_key(d.secondary_key));
    CHECK(d.primary_key != d.secondary_key);
    CHECK(d.status_updated_time.size() == 20);
    CHECK_FALSE(d.connected);

    auto again = sas_device("dev-1");
    CHECK(reg->create_device(again) == registry_result::already_exists);

    auto found = reg->find_device("dev-1");
    REQUIRE(found);
    CHECK(found->etag == d.etag);
    CHECK(found->primary_key == d.primary_key);
    CHECK(found->generation_id == d.generation_id);
    CHECK_FALSE(reg->find_device("dev-2"));

    auto x509 = sas_device("dev-2");
    x509.authentication = auth_type::self_signed;
    x509.primary_thumbprint = std::string(64, 'A');
    x509.secondary_thumbprint = std::string(64, 'B');
    REQUIRE(reg->create_device(x509) == registry_result::ok);
    CHECK(x509.primary_key.empty());
    auto found2 = reg->find_device("dev-2");
    REQUIRE(found2);
    CHECK(found2->authentication == auth_type::self_signed);
    CHECK(found2->primary_thumbprint == std::string(64, 'A'));

    auto all = reg->list_devices();
    REQUIRE(all.size() == 2);
    CHECK(all[0].device_id == "dev-1");
    CHECK(all[1].device_id == "dev-2");

    SECTION("update with the right etag, then a stale one")
    {
        auto u = *found;
        u.status = device_status::disabled;
        u.status_reason = "maintenance";
        u.primary_key.clear(); // omitted keys keep the stored ones
        const auto old_etag = u.etag;
        REQUIRE(reg->update_device(u, old_etag) == registry_result::ok);
        CHECK(u.etag != old_etag);
        CHECK(u.generation_id == d.generation_id);
        CHECK(u.primary_key == d.primary_key);
        auto after = reg->find_device("dev-1");
        REQUIRE(after);
        CHECK(after->status == device_status::disabled);
        CHECK(after->status_reason == "maintenance");
        CHECK(after->etag == u.etag);

        auto stale = *after;
        stale.status = device_status::enabled;
        CHECK(reg->update_device(stale, old_etag) == registry_result::etag_mismatch);
        CHECK(reg->find_device("dev-1")->status == device_status::disabled);
        CHECK(reg->update_device(stale, "*") == registry_result::ok);
        CHECK(reg->update_device(stale, "") == registry_result::ok);
        CHECK(reg->find_device("dev-1")->status == device_status::enabled);

        auto missing = sas_device("nope");
        CHECK(reg->update_device(missing, "") == registry_result::not_found);
    }
    SECTION("delete honours the etag")
    {
        CHECK(reg->delete_device("dev-1", "not-the-etag") == registry_result::etag_mismatch);
        CHECK(reg->find_device("dev-1"));
        CHECK(reg->delete_device("dev-1", d.etag) == registry_result::ok);
        CHECK_FALSE(reg->find_device("dev-1"));
        CHECK(reg->delete_device("dev-1", "") == registry_result::not_found);
        CHECK(reg->delete_device("dev-2", "*") == registry_result::ok);
        CHECK(reg->list_devices().empty());
    }
    SECTION("connection state")
    {
        reg->set_connection_state("dev-1", true);
        auto c = reg->find_device("dev-1");
        CHECK(c->connected);
        CHECK(c->etag == d.etag); // connection state is not a registry edit
        // update_device keeps the stored connection state.
        auto u = *c;
        u.connected = false;
        REQUIRE(reg->update_device(u, "") == registry_result::ok);
        CHECK(u.connected);
        CHECK(reg->find_device("dev-1")->connected);

        reg->set_connection_state("dev-2", true);
        reg->mark_all_disconnected();
        CHECK_FALSE(reg->find_device("dev-1")->connected);
        CHECK_FALSE(reg->find_device("dev-2")->connected);
        reg->set_connection_state("unknown", true); // a no-op, not an error
    }
}

TEST_CASE("device ids are case-sensitive", "[registry]")
{
    temp_dir dir;
    auto reg = open_sqlite_registry(dir.path / "registry.db");
    auto a = sas_device("MyDevice");
    auto b = sas_device("mydevice");
    REQUIRE(reg->create_device(a) == registry_result::ok);
    REQUIRE(reg->create_device(b) == registry_result::ok);
    CHECK(reg->list_devices().size() == 2);
    CHECK(reg->find_device("MyDevice")->primary_key == a.primary_key);
    CHECK(reg->find_device("mydevice")->primary_key == b.primary_key);
    CHECK_FALSE(reg->find_device("MYDEVICE"));
    CHECK(reg->delete_device("mydevice", "") == registry_result::ok);
    CHECK(reg->find_device("MyDevice"));
}

TEST_CASE("settings round-trip and survive reopening", "[registry]")
{
    temp_dir dir;
    const auto file = dir.path / "registry.db";
    std::string owner_key;
    {
        auto reg = open_sqlite_registry(file);
        CHECK_FALSE(reg->get_setting("hub_name"));
        reg->set_setting("hub_name", "first");
        reg->set_setting("hub_name", "second");
        auto d = sas_device("kept");
        REQUIRE(reg->create_device(d) == registry_result::ok);
        owner_key = reg->find_policy("iothubowner")->primary_key;
    }
    auto reg = open_sqlite_registry(file);
    CHECK(reg->get_setting("hub_name") == "second");
    CHECK(reg->find_device("kept"));
    CHECK(reg->find_policy("iothubowner")->primary_key == owner_key); // not re-created
    CHECK(reg->list_policies().size() == 5);
}

TEST_CASE("database files are private", "[registry]")
{
    temp_dir dir;
    const auto file = dir.path / "nested" / "state" / "registry.db";
    auto reg = open_sqlite_registry(file);
    auto d = sas_device("dev");
    REQUIRE(reg->create_device(d) == registry_result::ok);
    CHECK(mode_of(file.parent_path()) == 0700);
    CHECK(mode_of(file) == 0600);
    CHECK(fs::exists(fs::path(file.string() + "-wal")));
    CHECK(mode_of(fs::path(file.string() + "-wal")) == 0600);
    CHECK(mode_of(fs::path(file.string() + "-shm")) == 0600);
}

TEST_CASE("two registries on one file see each other's writes", "[registry]")
{
    temp_dir dir;
    const auto file = dir.path / "registry.db";
    auto relay = open_sqlite_registry(file);
    auto admin = open_sqlite_registry(file); // as an admin command in another process would

    CHECK(admin->find_policy("iothubowner")->primary_key == relay->find_policy("iothubowner")->primary_key);

    const auto before = relay->external_change_counter();
    CHECK(relay->external_change_counter() == before);
    auto d = sas_device("added-by-admin");
    REQUIRE(admin->create_device(d) == registry_result::ok);
    const auto after = relay->external_change_counter();
    CHECK(after != before);
    CHECK(relay->find_device("added-by-admin"));

    // The registry's own writes do not count as external.
    relay->set_connection_state("added-by-admin", true);
    CHECK(relay->external_change_counter() == after);
    CHECK(admin->find_device("added-by-admin")->connected);

    auto dup = sas_device("added-by-admin");
    CHECK(relay->create_device(dup) == registry_result::already_exists);
    CHECK(relay->delete_device("added-by-admin", d.etag) == registry_result::ok);
    CHECK_FALSE(admin->find_device("added-by-admin"));
}

TEST_CASE("a file that is not a database is reported", "[registry]")
{
    temp_dir dir;
    const auto file = dir.path / "registry.db";
    {
        std::ofstream out(file);
        out << std::string(8192, 'x');
    }
    try {
        open_sqlite_registry(file);
        FAIL("expected an exception");
    } catch (const std::runtime_error& e) {
        CHECK_THAT(e.what(), Catch::Contains(file.string()));
    }
}

TEST_CASE("the audit trail records changes for other processes to read", "[registry]")
{
    temp_dir dir;
    auto relay = open_sqlite_registry(dir.path / "registry.db");
    auto admin = open_sqlite_registry(dir.path / "registry.db");
    const auto start = relay->last_audit_id();
    CHECK(relay->audit_after(start, 10).empty());

    admin->append_audit({0, {}, "admin-cli uid=0", "device-update", "dev-1", "renew-key=primary"});
    admin->append_audit({0, {}, "admin-cli uid=0", "device-delete", "dev-2", ""});
    auto entries = relay->audit_after(start, 10);
    REQUIRE(entries.size() == 2);
    CHECK(entries[0].id > start);
    CHECK(entries[1].id > entries[0].id);
    CHECK(entries[0].actor == "admin-cli uid=0");
    CHECK(entries[0].action == "device-update");
    CHECK(entries[0].subject == "dev-1");
    CHECK(entries[0].detail == "renew-key=primary");
    CHECK(entries[0].time.size() == 20); // 2026-11-27T10:00:00Z
    CHECK(entries[1].action == "device-delete");
    CHECK(relay->last_audit_id() == entries[1].id);
    CHECK(relay->audit_after(entries[0].id, 10).size() == 1);
    CHECK(relay->audit_after(start, 1).size() == 1);
}

TEST_CASE("a version 1 registry gains the audit table and keeps its data", "[registry]")
{
    temp_dir dir;
    const auto file = dir.path / "registry.db";
    {
        auto reg = open_sqlite_registry(file);
        auto d = sas_device("kept");
        REQUIRE(reg->create_device(d) == registry_result::ok);
    }
    {
        sqlite3* db = nullptr;
        REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
        CHECK(sqlite3_exec(db, "DROP TABLE audit; DROP TABLE device_cas; PRAGMA user_version=1;", nullptr, nullptr,
                           nullptr) == SQLITE_OK);
        sqlite3_close(db);
    }
    auto reg = open_sqlite_registry(file);
    CHECK(reg->find_device("kept"));
    reg->append_audit({0, {}, "test", "device-update", "kept", ""});
    CHECK(reg->audit_after(0, 10).size() == 1);
}

TEST_CASE("a version 2 registry gains the device_cas table and keeps its data", "[registry]")
{
    temp_dir dir;
    const auto file = dir.path / "registry.db";
    {
        auto reg = open_sqlite_registry(file);
        auto d = sas_device("kept");
        REQUIRE(reg->create_device(d) == registry_result::ok);
        reg->append_audit({0, {}, "test", "device-create", "kept", ""});
    }
    {
        sqlite3* db = nullptr;
        REQUIRE(sqlite3_open(file.c_str(), &db) == SQLITE_OK);
        CHECK(sqlite3_exec(db, "DROP TABLE device_cas; PRAGMA user_version=2;", nullptr, nullptr, nullptr) == SQLITE_OK);
        sqlite3_close(db);
    }
    auto reg = open_sqlite_registry(file);
    CHECK(reg->find_device("kept"));
    CHECK(reg->audit_after(0, 10).size() == 1);
    CHECK(reg->list_device_cas().empty());
    device_ca ca{"fleet", "(pem)", std::string(64, 'A'), ""};
    CHECK(reg->add_device_ca(ca, false) == registry_result::ok);
    CHECK(open_sqlite_registry(file)->find_device_ca("fleet"));
}
