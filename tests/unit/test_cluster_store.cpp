// Cluster mode's tables (relay/cluster_store.hpp) on a real PostgreSQL 15: leases decide which
// presence rows count, the highest claim holds a device, reclaiming never takes a device from a
// live node, and claims are announced on streamgate_presence.
#include <catch2/catch.hpp>

#include "../support/pg_server.hpp"
#include "relay/cluster_store.hpp"
#include "relay/registry.hpp"

#include <chrono>
#include <thread>

using namespace sg::relay;
using namespace std::chrono_literals;

namespace {

cluster_node_record node(const std::string& id, const std::string& epoch)
{
    return {id, epoch, "wss://" + id + ".example:443", id + ".example:9443", std::string(64, 'A')};
}

std::vector<presence_claim> claims_within(cluster_store& store, std::size_t want, std::chrono::milliseconds timeout)
{
    std::vector<presence_claim> out;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
        store.poll_claims(out);
        std::this_thread::sleep_for(20ms);
    }
    return out;
}

} // namespace

TEST_CASE("cluster store: leases, claims and presence", "[registry][postgres][cluster]")
{
    sgtest::pg_server pg;
    auto url = pg.create_database("cluster");
    auto reg = open_postgres_registry(url); // the schema (version 2) comes with the registry
    cluster_store a(url), b(url), watcher(url);
    std::vector<presence_claim> ignored;
    watcher.poll_claims(ignored); // starts listening

    CHECK(valid_node_id("n1"));
    CHECK(valid_node_id("relay-1.eu_west"));
    CHECK_FALSE(valid_node_id(""));
    CHECK_FALSE(valid_node_id("tab\there"));
    CHECK_FALSE(valid_node_id(std::string(65, 'x')));

    // One secret for every node, created once.
    auto secret = a.shared_secret();
    CHECK(secret.size() == 44);
    CHECK(b.shared_secret() == secret);

    REQUIRE(a.join(node("n1", "e1"), 60s));
    REQUIRE(b.join(node("n2", "e2"), 60s));
    // A second process as n1 while n1's lease is live is refused.
    CHECK_FALSE(b.join(node("n1", "other"), 60s));
    CHECK(a.renew("n1", "e1", 60s));

    // The newest claim holds the device; the older node learns it from the notification.
    auto first = a.claim("dev", "n1", "e1");
    REQUIRE(first);
    CHECK(a.find_home("dev")->node_id == "n1");
    CHECK(a.find_home("dev")->cluster_address == "n1.example:9443");
    auto second = b.claim("dev", "n2", "e2");
    REQUIRE(second);
    CHECK(*second > *first);
    CHECK(a.find_home("dev")->node_id == "n2");
    auto announced = claims_within(watcher, 2, 5s);
    REQUIRE(announced.size() == 2);
    CHECK(announced[1].device_id == "dev");
    CHECK(announced[1].node_id == "n2");
    CHECK(announced[1].epoch == "e2");
    CHECK(announced[1].claim == *second);

    // Reclaiming (after an outage) does not take a device from a live node...
    CHECK_FALSE(a.reclaim("dev", "n1", "e1"));
    CHECK(a.find_home("dev")->node_id == "n2");
    // ...and a release only removes the node's own row.
    a.release("dev", "n1", "e1");
    CHECK(a.find_home("dev")->node_id == "n2");

    // A node whose lease lapsed is no home, and its devices can be reclaimed.
    pg.psql("cluster", "UPDATE cluster_nodes SET lease_until = now() - interval '1 second' WHERE node_id = 'n2'");
    CHECK_FALSE(a.find_home("dev"));
    CHECK(a.reclaim("dev", "n1", "e1"));
    CHECK(a.find_home("dev")->node_id == "n1");
    CHECK(b.renew("n2", "e2", 60s));              // the row is still its own: renewing revives it
    CHECK(b.find_home("dev")->node_id == "n1");    // but the device stays where it was reclaimed

    // A new epoch of n1 drops the old epoch's presence; the old epoch can no longer renew.
    pg.psql("cluster", "UPDATE cluster_nodes SET lease_until = now() - interval '1 second' WHERE node_id = 'n1'");
    REQUIRE(b.join(node("n1", "e3"), 60s));
    CHECK_FALSE(a.renew("n1", "e1", 60s));
    CHECK_FALSE(a.find_home("dev"));
    CHECK(pg.psql("cluster", "SELECT count(*) FROM presence") == "0\n");

    // After an outage a node keeps the rows of the devices it still holds, and only those.
    for (const char* id : {"kept", "gone", "odd,(id)=@$"})
        REQUIRE(b.claim(id, "n1", "e3"));
    b.release_all_but({"kept", "odd,(id)=@$"}, "n1", "e3");
    CHECK(pg.psql("cluster", "SELECT device_id FROM presence ORDER BY device_id") == "kept\nodd,(id)=@$\n");
    b.release_all_but({}, "n1", "e3");
    CHECK(pg.psql("cluster", "SELECT count(*) FROM presence") == "0\n");

    // Leaving removes the node and its presence at once.
    b.claim("dev2", "n2", "e2");
    CHECK(b.find_home("dev2"));
    b.leave("n2", "e2");
    CHECK_FALSE(b.find_home("dev2"));
    CHECK(pg.psql("cluster", "SELECT count(*) FROM cluster_nodes WHERE node_id = 'n2'") == "0\n");
}
