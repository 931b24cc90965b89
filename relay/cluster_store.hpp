#pragma once
// Cluster mode's tables in the shared PostgreSQL database (schema version 2, registry_pg.cpp):
// node leases (cluster_nodes), presence (which node holds each device's control connection) and
// the nodes' shared secret. Plain blocking libpq calls: the relay makes them on its cluster
// thread (writes, notifications) or behind a mutex (look-ups), never per byte.
//
// Rules the SQL keeps:
//   - a node is live while lease_until (the database's clock) has not passed; a look-up ignores
//     presence rows of a node that is not live or whose epoch is not the node's current one;
//   - a claim gets a number from one sequence; a device's row holds the highest claim, so the
//     newest connection wins whatever order the nodes' writes arrive in;
//   - every claim that takes a row is announced with NOTIFY streamgate_presence, payload
//     "device\tnode\tepoch\tclaim", so the node that held the device closes it (400027).
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace sg::relay {

namespace pg {
class connection;
}

struct cluster_node_record {
    std::string node_id, epoch;
    std::string public_url;         // wss://host:port: where streams to this node's devices join
    std::string cluster_address;    // host:port of its cluster listener
    std::string certificate_sha256; // hex, upper case: the certificate its cluster listener presents
};

struct presence_claim {
    std::string device_id, node_id, epoch;
    std::int64_t claim = 0;
};

inline constexpr const char* presence_channel = "streamgate_presence";

// Node ids: 1-64 of A-Z a-z 0-9 . _ - (they travel in headers and notification payloads).
bool valid_node_id(std::string_view id);

class cluster_store {
public:
    // Opens its own connections (throws registry_unavailable when the server cannot be reached).
    explicit cluster_store(const std::string& url);
    ~cluster_store();

    // The nodes' shared secret (base64 of 32 bytes), created by the first node that asks.
    std::string shared_secret();

    // Registers this process as node_id with its (new) epoch and a lease of `lease`. False when
    // another process holds node_id with a lease that has not lapsed. Removes presence rows of
    // the node's earlier epochs.
    bool join(const cluster_node_record& self, std::chrono::milliseconds lease);
    // Extends the lease; false when the row is no longer this epoch's (another process took the id).
    bool renew(const std::string& node_id, const std::string& epoch, std::chrono::milliseconds lease);
    // Clean shutdown: the node's row and presence go at once.
    void leave(const std::string& node_id, const std::string& epoch);

    // A new connection of `device` on this node: takes the row unless a newer claim holds it.
    // The claim's number, or nullopt when a newer connection elsewhere already won.
    std::optional<std::int64_t> claim(const std::string& device, const std::string& node_id, const std::string& epoch);
    // After this node could not write for a while: claims `device` again only when its row is
    // absent, already this node's, or a dead node's (a newer connection elsewhere keeps it).
    std::optional<std::int64_t> reclaim(const std::string& device, const std::string& node_id, const std::string& epoch);
    // The connection ended: the row goes if it is still this node's.
    void release(const std::string& device, const std::string& node_id, const std::string& epoch);
    // Drops this node's rows for every device but `held` (releases lost while the database was away).
    void release_all_but(const std::vector<std::string>& held, const std::string& node_id, const std::string& epoch);

    // The live node holding `device`, if any (a separate connection behind a mutex: safe from
    // any thread, one round trip).
    std::optional<cluster_node_record> find_home(const std::string& device);
    // Marks Disconnected (connectionState) the devices marked Connected before `stale_before`
    // (ISO 8601 UTC, the registry's format) that no live node holds: those of a node that died
    // without leaving. `now` is the new connectionStateUpdatedTime. How many were marked.
    int sweep_connection_state(const std::string& stale_before, const std::string& now);
    // Up to `max` live presence rows, (device, node), for the status page.
    std::vector<std::pair<std::string, std::string>> live_presence(std::size_t max);
    // The live node `node_id` (same connection and rules).
    std::optional<cluster_node_record> find_node(const std::string& node_id);

    // LISTENs on presence_channel (on a third connection) and reads what arrived without
    // blocking. False when it had to LISTEN anew (the first call, or after the connection was
    // lost: notifications sent meanwhile are gone); throws when the server cannot be reached.
    bool poll_claims(std::vector<presence_claim>& out);

private:
    std::optional<cluster_node_record> look_up(const char* sql, const std::string& key, const char* what);

    std::string url_;
    std::unique_ptr<pg::connection> db_;     // the cluster thread's writes
    std::unique_ptr<pg::connection> lookup_; // find_home, from I/O threads
    std::mutex lookup_mutex_;
    std::unique_ptr<pg::connection> listener_;
    bool listening_ = false;
};

} // namespace sg::relay
