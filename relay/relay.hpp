#pragma once
// The relay: registry, device control connections, stream creation and the streaming endpoint,
// all on one TLS port.
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>
#include "common/tls.hpp"
#include "relay/limits.hpp"

namespace sg::relay {

struct relay_options {
    std::filesystem::path data_dir = "./sg";
    std::string registry;                         // "" = <data_dir>/registry.db, or postgresql://...
    std::string listen = "0.0.0.0:8443";
    std::string host_name;                        // public name; default from --listen
    std::optional<std::filesystem::path> cert, key; // default: the embedded CA's certificate
    unsigned threads = 0;                         // 0 = one per core
    tls_version min_tls = tls_version::v1_2;
    std::chrono::seconds handshake_timeout{10};   // TCP accept to a complete HTTP request
    std::chrono::seconds drain_timeout{10};       // SIGTERM: time live streams get to finish
    std::chrono::seconds clock_skew{300};         // allowance for SAS token expiry
    stream_limits streams;                        // concurrent streams and creation rates
    std::size_t max_control_connections = 100000; // connected devices
    std::size_t max_header_bytes = 16 * 1024;     // HTTP request header
    std::size_t max_control_message = 16 * 1024; // control-connection JSON message
    std::vector<std::string> ip_filter;           // ordered "accept|reject CIDR" rules
    std::chrono::seconds idle_stream_timeout{0};  // close streams with no bytes either way; 0 = never
    bool keep_stream_connections = true;          // a proxy's stream connection may carry its next stream
    std::string mqtt_listen;                      // MQTT over TLS for IoT Hub device code; "" or "off" = none
    std::string admin_listen = "127.0.0.1:9464";  // metrics, health, status page; "" or "off" = none
    bool admin_listen_required = false;           // set explicitly: failing to bind it is fatal
    std::chrono::seconds registry_cache_ttl{60};  // PostgreSQL down: credentials read this recently still serve
    // Cluster mode (docs/CLUSTER.md): several relays on one PostgreSQL registry.
    std::string cluster_listen;                   // node-to-node TLS listener ADDR:PORT; "" or "off" = single node
    std::string node_id;                          // this node's name (default: the machine's host name)
    std::string public_url;                       // wss://host:port streams to this node's devices join (default: from --host-name)
    std::chrono::milliseconds cluster_lease{10000}; // a node not renewing for this long is dead to the others
    bool verbose = false;
};

// Runs until SIGTERM/SIGINT; returns the process exit code.
int run_relay(const relay_options& options);

} // namespace sg::relay
