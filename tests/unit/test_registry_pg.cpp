// What only the PostgreSQL registry has: URLs with passwords, the versioned schema under an
// advisory lock, and losing the server and getting it back. A real PostgreSQL 15 per test case.
#include <catch2/catch.hpp>

#include "../support/pg_server.hpp"
#include "relay/registry.hpp"

#include <chrono>
#include <functional>
#include <future>
#include <thread>

using namespace sg::relay;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

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

std::string error_of(const std::function<void()>& f)
{
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST_CASE("postgres registry: URLs are shown without their password", "[registry][postgres]")
{
    CHECK(redact_database_url("postgresql://sg:s3cret@db:5432/streamgate") == "postgresql://sg:***@db:5432/streamgate");
    CHECK(redact_database_url("postgres://sg@db/streamgate?password=s3cret&sslmode=require") ==
          "postgres://sg@db/streamgate?password=***&sslmode=require");
    CHECK(redact_database_url("postgresql://db/x") == "postgresql://db/x");
    CHECK(is_postgres_url("postgres://x"));
    CHECK_FALSE(is_postgres_url("sqlite:///x"));
    CHECK_FALSE(error_of([] { open_postgres_registry("mysql://u:s3cret@h/d"); }).empty());
    CHECK_FALSE(contains(error_of([] { open_postgres_registry("mysql://u:s3cret@h/d"); }), "s3cret"));

    sgtest::pg_server pg;
    auto url = pg.create_database("redact");
    auto reg = open_postgres_registry(url);
    CHECK(reg->describe() == "postgresql://streamgate:***@127.0.0.1:" + std::to_string(pg.port()) + "/redact");
    // A wrong password: a clear error naming the database, not echoing either password.
    std::string wrong = "postgresql://streamgate:not-the-password@127.0.0.1:" + std::to_string(pg.port()) + "/redact";
    auto message = error_of([&] { open_postgres_registry(wrong); });
    INFO(message);
    CHECK(contains(message, "password authentication failed"));
    CHECK(contains(message, "/redact"));
    CHECK_FALSE(contains(message, "not-the-password"));
    CHECK_FALSE(contains(message, pg.password()));
}

TEST_CASE("postgres registry: versioned schema, created once by concurrent openers", "[registry][postgres]")
{
    sgtest::pg_server pg;
    auto url = pg.create_database("schema");
    // Four processes' worth of relays and admin commands start at once on an empty database.
    std::vector<std::future<std::unique_ptr<registry>>> openers;
    for (int i = 0; i < 4; ++i)
        openers.push_back(std::async(std::launch::async, [&] { return open_postgres_registry(url); }));
    std::vector<std::unique_ptr<registry>> regs;
    for (auto& f : openers)
        REQUIRE_NOTHROW(regs.push_back(f.get()));
    CHECK(regs[0]->list_policies().size() == 5);
    CHECK(pg.psql("schema", "SELECT version FROM schema_version") == "3\n");
    CHECK(pg.psql("schema", "SELECT count(*) FROM policies") == "5\n");
    CHECK(pg.psql("schema", "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%_changed' OR tgname = "
                            "'audit_appended'") == "5\n");

    // A database migrated by a newer program is refused, not damaged.
    pg.psql("schema", "UPDATE schema_version SET version = 99");
    auto message = error_of([&] { open_postgres_registry(url); });
    CHECK(contains(message, "schema version 99 is newer"));
}

TEST_CASE("postgres registry: a change made with psql reaches the change counter", "[registry][postgres]")
{
    sgtest::pg_server pg;
    auto url = pg.create_database("notify");
    auto reg = open_postgres_registry(url);
    device_identity d;
    d.device_id = "by-hand";
    REQUIRE(reg->create_device(d) == registry_result::ok);
    auto seen = reg->external_change_counter();
    // Connection-state bookkeeping is not a change anyone must react to...
    pg.psql("notify", "UPDATE devices SET connected = true WHERE device_id = 'by-hand'");
    CHECK_FALSE(counter_moves(*reg, seen, 300ms));
    // ...a status change by an operator is.
    pg.psql("notify", "UPDATE devices SET status = 'disabled' WHERE device_id = 'by-hand'");
    CHECK(counter_moves(*reg, seen, 1s));
}

TEST_CASE("postgres registry: the server going away is registry_unavailable, and it comes back by itself",
          "[registry][postgres]")
{
    sgtest::pg_server pg;
    auto url = pg.create_database("outage");
    auto reg = open_postgres_registry(url);
    device_identity d;
    d.device_id = "survivor";
    REQUIRE(reg->create_device(d) == registry_result::ok);
    REQUIRE(reg->find_device("survivor"));
    reg->external_change_counter();

    pg.stop("immediate");
    std::string message;
    try {
        reg->find_device("survivor");
        FAIL("a read with the server down must fail");
    } catch (const registry_unavailable& e) {
        message = e.what();
    }
    INFO(message);
    CHECK(contains(message, "127.0.0.1:" + std::to_string(pg.port()) + "/outage"));
    CHECK(contains(message, "database unavailable"));
    CHECK_FALSE(contains(message, pg.password()));
    device_identity other;
    other.device_id = "not-now";
    CHECK_THROWS_AS(reg->create_device(other), registry_unavailable);
    CHECK_THROWS_AS(reg->append_audit({0, {}, "a", "b", "c", ""}), registry_unavailable);
    std::uint64_t during = 0;
    CHECK_NOTHROW(during = reg->external_change_counter()); // the relay's housekeeping polls it

    pg.start();
    // The same object: the first statements after the restart work (no restart of its user).
    auto found = reg->find_device("survivor");
    REQUIRE(found);
    CHECK(found->etag == d.etag);
    REQUIRE(reg->create_device(other) == registry_result::ok);
    // Changes made while it was not listening may be lost: it reports one once it listens again.
    CHECK(counter_moves(*reg, during, 3s));
    auto seen = reg->external_change_counter();
    auto admin = open_postgres_registry(url);
    REQUIRE(admin->delete_device("not-now", "") == registry_result::ok);
    CHECK(counter_moves(*reg, seen, 1s));
}
