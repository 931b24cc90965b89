// streamgate-relay: runs the relay, or with a subcommand administers its registry.
#include <CLI/CLI.hpp>
#include <iostream>
#include "common/config.hpp"
#include "common/connection_string.hpp"
#include "common/liveness.hpp"
#include "common/log.hpp"
#include "relay/admin.hpp"
#include "relay/relay.hpp"
#include "streamgate/version.hpp"

int main(int argc, char** argv)
{
    sg::relay::relay_options options;
    sg::relay::admin_options admin;
    CLI::App app{"streamgate-relay: the Streamgate relay (device registry, control connections and streaming "
                 "endpoint on one TLS port).\n\nWithout a subcommand it runs the relay until SIGTERM/SIGINT. "
                 "With one, it administers the registry in --data-dir (also while the relay runs) and prints "
                 "only the result on stdout. Settings come from the command line, then environment variables "
                 "(STREAMGATE_<OPTION>, shown as Env), then --config FILE (TOML), then the defaults shown.\n\n"
                 "Exit codes: 0 success, 1 error (the message names the error code, e.g. 409001), 2 usage or "
                 "config error.",
                 "streamgate-relay"};
    std::string data_dir = options.data_dir.string();
    std::string min_tls = "1.2";
    std::string cert, key;
    int drain = static_cast<int>(options.drain_timeout.count());
    int handshake = static_cast<int>(options.handshake_timeout.count());
    app.add_option("--data-dir", data_dir, "Registry, keys and certificates (created 0700)")->capture_default_str();
    app.add_option("--registry", options.registry,
                   "Registry database: postgresql://user:password@host:port/database (also postgres://) for a shared "
                   "PostgreSQL registry; default: registry.db in --data-dir (which holds the certificates either way)");
    app.add_option("--listen", options.listen, "Address and port to serve on, host:port (port 0 picks a free one)")
        ->capture_default_str();
    app.add_option("--host-name", options.host_name,
                   "Public host name of the relay, used in connection strings, streaming URLs and the certificate "
                   "(default: as last started on --data-dir, else localhost)");
    app.add_option("--cert", cert, "Server certificate chain (PEM); default: issued by the embedded CA");
    app.add_option("--key", key, "Private key for --cert (PEM)");
    app.add_option("--threads", options.threads, "I/O threads (0: one per core)")->capture_default_str();
    app.add_option("--min-tls", min_tls, "Minimum TLS version: 1.2 or 1.3")->check(CLI::IsMember({"1.2", "1.3"}))
        ->capture_default_str();
    app.add_option("--handshake-timeout", handshake, "Seconds a client gets for TCP+TLS+HTTP request")->capture_default_str();
    app.add_option("--drain-timeout", drain, "Seconds live streams get to finish on SIGTERM")->capture_default_str();
    int clock_skew = static_cast<int>(options.clock_skew.count());
    auto& limits = options.streams;
    app.add_option("--clock-skew", clock_skew, "Seconds a SAS token is still accepted after its expiry")->capture_default_str();
    app.add_option("--max-streams", limits.max_streams, "Concurrent streams on the relay")->capture_default_str();
    app.add_option("--max-streams-per-device", limits.max_streams_per_device, "Concurrent streams to one device")
        ->capture_default_str();
    app.add_option("--stream-rate", limits.stream_rate, "New streams per second on the relay (token bucket)")
        ->capture_default_str();
    app.add_option("--stream-burst", limits.stream_burst, "Burst allowance for --stream-rate")->capture_default_str();
    app.add_option("--device-stream-rate", limits.device_stream_rate, "New streams per second to one device")
        ->capture_default_str();
    app.add_option("--device-stream-burst", limits.device_stream_burst, "Burst allowance for --device-stream-rate")
        ->capture_default_str();
    app.add_option("--max-devices", options.max_control_connections, "Connected devices (control connections)")
        ->capture_default_str();
    app.add_option("--max-header-bytes", options.max_header_bytes, "Largest HTTP request header accepted")
        ->capture_default_str();
    app.add_option("--max-control-message", options.max_control_message, "Largest control message from a device")
        ->capture_default_str();
    app.add_option("--ip-filter", options.ip_filter,
                   "Ordered rule \"accept|reject CIDR\" (repeatable); the first match decides, none matching accepts");
    int idle_stream = 0;
    app.add_option("--idle-stream-timeout", idle_stream, "Close a stream that moved no byte for this many seconds (0 = never)")
        ->capture_default_str();
    app.add_option("--keep-stream-connections", options.keep_stream_connections,
                   "Keep a proxy's stream connection after a cleanly ended stream for its next one (no TLS "
                   "handshake per stream; ignored in cluster mode)")
        ->capture_default_str();
    int ping_interval = 20;
    app.add_option("--ping-interval", ping_interval,
                   "Seconds of silence before a WebSocket peer is pinged; dead after two intervals")->capture_default_str();
    options.mqtt_listen = "off";
    app.add_option("--mqtt-listen", options.mqtt_listen,
                   "MQTT 3.1.1 over TLS for unmodified IoT Hub device code, ADDR:PORT (8883 by convention; port 0 "
                   "picks a free one; \"off\" = none). MQTT over WebSockets is always on the main port at /$iothub/websocket")
        ->capture_default_str();
    auto* admin_listen = app.add_option("--admin-listen", options.admin_listen,
        "Plain-HTTP admin listener ADDR:PORT for /metrics, /healthz, /readyz and the status page (\"off\" = none)")->capture_default_str();
    options.cluster_listen = "off";
    app.add_option("--cluster-listen", options.cluster_listen,
                   "Cluster mode: TLS listener ADDR:PORT where the other relays on the same PostgreSQL --registry ask "
                   "this one for streams to the devices it holds (requests signed with the cluster's shared secret, "
                   "kept in the database); \"off\" = a single relay")
        ->capture_default_str();
    app.add_option("--node-id", options.node_id,
                   "Cluster mode: this relay's name among the nodes, 1-64 of A-Z a-z 0-9 . _ - (default: the host name)");
    app.add_option("--public-url", options.public_url,
                   "The address streams to this relay's devices join, wss://HOST:PORT or HOST:PORT, named in streaming "
                   "URLs (default: wss:// and the HostName of connection strings)");
    int registry_cache_ttl = 60;
    app.add_option("--registry-cache-ttl", registry_cache_ttl,
                   "PostgreSQL registry: while the database cannot be reached, device and policy credentials read "
                   "from it in the last this many seconds still authenticate (never past a change this relay has "
                   "seen); 0 = none")
        ->capture_default_str()->check(CLI::Range(0, 86400));
    double cluster_lease = 10;
    app.add_option("--cluster-lease", cluster_lease,
                   "Cluster mode: seconds a node's lease lasts; renewed every quarter of it. A node that cannot renew "
                   "it stops taking new streams; the others ignore a node whose lease lapsed")
        ->capture_default_str()->check(CLI::Range(0.4, 3600.0));
    app.add_flag("-v,--verbose", options.verbose, "Debug logging");
    sg::cli::add_common_options(app, std::string("streamgate-relay ") + sg::version);
    sg::cli::add_default_env_names(app);
    app.require_subcommand(0, 1);

    int admin_result = 0;
    bool admin_ran = false;
    sg::relay::add_admin_commands(app, admin, &admin_result, &admin_ran);
    // Admin callbacks read data_dir/host name from `admin`, so fill it before they run.
    app.parse_complete_callback([&] {
        admin.data_dir = data_dir;
        admin.registry = options.registry;
        admin.host_name = options.host_name;
    });

    if (int code = sg::cli::parse(app, argc, argv); code >= 0)
        return code;
    if (admin_ran)
        return admin_result;

    if (cert.empty() != key.empty()) {
        sg::report_error("relay", "--cert and --key go together");
        return 2;
    }
    if (!cert.empty()) {
        options.cert = cert;
        options.key = key;
    }
    options.data_dir = data_dir;
    options.admin_listen_required = admin_listen->count() > 0;
    options.min_tls = min_tls == "1.3" ? sg::tls_version::v1_3 : sg::tls_version::v1_2;
    options.drain_timeout = std::chrono::seconds(drain);
    options.handshake_timeout = std::chrono::seconds(handshake);
    options.clock_skew = std::chrono::seconds(std::max(0, clock_skew));
    options.idle_stream_timeout = std::chrono::seconds(std::max(0, idle_stream));
    options.registry_cache_ttl = std::chrono::seconds(registry_cache_ttl);
    options.cluster_lease = std::chrono::milliseconds(static_cast<long>(cluster_lease * 1000));
    if (options.cluster_listen == "off")
        options.cluster_listen.clear();
    sg::set_default_liveness(sg::liveness{std::chrono::seconds(30), std::chrono::seconds(std::max(1, ping_interval))});
    if (sg::cli::print_config_requested(app)) {
        std::cout << sg::cli::effective_config(app);
        return 0;
    }
    try {
        return sg::relay::run_relay(options);
    } catch (const std::exception& e) {
        sg::report_error("relay", e.what());
        return 1;
    }
}
