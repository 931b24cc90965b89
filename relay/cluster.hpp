#pragma once
// Cluster mode (--cluster-listen, issue 10): several relays on one PostgreSQL registry.
//   - presence: which node holds each device's control connection (cluster_store.hpp); a newer
//     connection on another node closes the older one with 400027;
//   - a lease per node, renewed by the cluster thread; a node that cannot renew it fences
//     itself (no new streams) until it can;
//   - the cluster listener: a stream request for a device held elsewhere is asked of the
//     device's node (its "home") over TLS, authenticated with an HMAC of the nodes' shared
//     secret; the home creates the stream and both sides join the home's --public-url.
// Every libpq call runs on the cluster thread, except find_home (one round trip, like a
// registry look-up). Included by the relay's network translation units only.
#include <memory>
#include "relay/internal.hpp"

namespace sg::relay {

class cluster_node {
public:
    virtual ~cluster_node() = default;

    // Binds --cluster-listen, joins the cluster (new epoch), starts the cluster thread and the
    // listener's accept loop on `ioc`. Throws config_error / std::runtime_error /
    // registry_unavailable when that is impossible.
    static std::shared_ptr<cluster_node> start(std::shared_ptr<relay_state> state, asio::io_context& ioc,
                                               const std::filesystem::path& certificate_chain);

    virtual const std::string& node_id() const = 0;
    // True while the node has no lease it knows to be valid: no new streams, here or for others.
    virtual bool fenced() const = 0;

    // relay_state's device steps (control.cpp) tell presence about this node's connections;
    // both return at once (the writes are queued for the cluster thread).
    virtual void device_online(const std::shared_ptr<control_channel>& channel) = 0;
    virtual void device_offline(const std::shared_ptr<control_channel>& channel) = 0;

    // A stream request for a device this node does not hold: 404103 at once when no live node
    // holds it, else the home's answer (504101 when it does not answer in time).
    virtual asio::awaitable<http::response<http::string_body>> open_remote_stream(const request_type& req,
                                                                                  stream_offer offer) = 0;

    // A side joining a stream created by another node (all nodes behind one address): the
    // WebSocket upgrade goes on, signed, to that node's cluster listener and the connection's
    // bytes are carried both ways until either end closes. `home` is the node named by the
    // stream id (stream_home).
    virtual asio::awaitable<void> forward_join(tls_stream stream, request_type req, std::string home,
                                               std::string peer) = 0;

    // Which live node holds each device (at most `max` rows), for the status page. Throws
    // registry_unavailable.
    virtual std::vector<std::pair<std::string, std::string>> devices_by_node(std::size_t max) = 0;

    // For /metrics: stream requests this node asked of a home, and those other nodes asked of it.
    virtual std::uint64_t requests_sent() const = 0;
    virtual std::uint64_t requests_received() const = 0;
    // Devices whose control connection this node holds (its presence rows, or being written).
    virtual std::size_t devices_held() const = 0;
    // Seconds since the last lease renewal this node knows succeeded.
    virtual double lease_age_seconds() const = 0;
    // Database calls of cluster mode that failed (lease, presence, look-ups).
    virtual std::uint64_t database_errors() const = 0;
    // Joins this node forwarded to a stream's node, and those forwarded to it.
    virtual std::uint64_t joins_forwarded() const = 0;
    virtual std::uint64_t joins_received() const = 0;

    // SIGTERM: the cluster listener closes (in-flight requests finish).
    virtual void stop_accepting() = 0;
    // After the I/O threads stopped: the thread ends and the node leaves (its lease and presence
    // rows deleted, so others see its devices offline at once).
    virtual void stop() = 0;
};

// The node that created a stream, from its id ("{nodeId}.{hex}"); "" for a single relay's id.
std::string stream_home(std::string_view stream_id);

} // namespace sg::relay
