// streamgate-device-proxy "<DeviceConnectionString>" <targetHost> <targetPort>
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include "common/client.hpp"
#include "common/config.hpp"
#include "common/liveness.hpp"
#include "common/log.hpp"
#include "common/proxy_cli.hpp"
#include "device-proxy/device_proxy.hpp"
#include "streamgate/version.hpp"

int main(int argc, char** argv)
{
    namespace dp = sg::device_proxy;
    CLI::App app{"streamgate-device-proxy: runs on the device. Keeps an outbound TLS control connection to the "
                 "Streamgate relay and, for every stream a service opens, connects to the local target and carries "
                 "the bytes. Reconnects when the relay is away; serves any number of streams at once. Settings come "
                 "from the command line, then environment variables (shown as Env), then --config FILE (TOML), "
                 "then the defaults shown.\n\n"
                 "Exit codes: 0 stopped by SIGTERM/SIGINT, 1 error, 2 usage or config error, 3 refused by the relay "
                 "(--exit-on-auth-failure).",
                 "streamgate-device-proxy"};
    std::string connection, host, ca_file;
    int port = 0, stats = 10;
    std::vector<std::string> services;
    dp::options o;
    app.add_option("connection-string,--connection-string", connection,
                   "Device connection string: HostName=...;DeviceId=...;SharedAccessKey=... (required)")
        ->envname("IOTHUB_DEVICE_CONN_STRING");
    app.add_option("target-host,--target-host", host, "Default target host, e.g. localhost (required unless --service)");
    app.add_option("target-port,--target-port", port, "Default target port, e.g. 22 (required unless --service)");
    app.add_option("--service", services, "NAME=HOST:PORT: serve stream name NAME from HOST:PORT (repeatable); "
                                          "with any --service, unknown stream names are rejected");
    std::vector<std::string> relays;
    app.add_option("--relay", relays,
                   "HOST:PORT of a relay to connect to instead of the connection string's HostName (repeatable: the "
                   "nodes of a cluster, tried in turn on every reconnection; the SAS token still names the HostName)")
        ->allow_extra_args(false); // one HOST:PORT per --relay: the positionals may follow
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    std::string cert, key;
    app.add_option("--cert", cert, "Device certificate (PEM) for X.509 authentication (connection string with x509=true)");
    app.add_option("--key", key, "Private key for --cert (PEM)");
    app.add_option("--stats-interval", stats, "Seconds between traffic statistics lines (0 = off)")->capture_default_str();
    app.add_flag("--exit-on-auth-failure", o.exit_on_auth_failure,
                 "Exit (code 3) when the relay refuses the credentials (default: keep retrying)");
    bool warm_connections = true;
    app.add_option("--warm-connections", warm_connections,
                   "Keep a stream's connection to the relay 2 s after the stream for the next one (the relay agreeing), "
                   "and after a stream that needed a new connection open one more ahead, so streams in a burst skip the "
                   "TCP and TLS handshakes; false: connect only when a stream comes, one connection per stream (metered links)")
        ->capture_default_str();
    app.add_option("--threads", o.threads, "I/O threads (0: one per core). One thread carries several Gbit/s and avoids hand-offs "
                   "between threads, which made two threads cost 50 % more CPU per new stream; more help only "
                   "with many busy streams at once")->capture_default_str();
    int ping_interval = 20, drain = 10;
    app.add_option("--ping-interval", ping_interval,
                   "Seconds of silence before the relay is pinged; dead after two intervals")->capture_default_str();
    app.add_option("--drain-timeout", drain, "Seconds live streams get to finish on SIGTERM")->capture_default_str();
    int max_backoff = 60, backoff_reset = 60;
    app.add_option("--max-backoff", max_backoff,
                   "Longest wait in seconds between reconnection attempts (the wait doubles from 1 s, with jitter)")
        ->capture_default_str()->check(CLI::Range(1, 3600));
    app.add_option("--backoff-reset", backoff_reset,
                   "Seconds a connection must stay up for the next reconnection to start again from 1 s")
        ->capture_default_str()->check(CLI::Range(1, 86400));
    sg::proxy_cli proxy;
    sg::add_proxy_options(app, proxy);
    app.add_option("--metrics-listen", o.metrics_listen, "Plain-HTTP ADDR:PORT for /metrics and /healthz (default: off)");
    app.add_flag("-v,--verbose", o.verbose, "Debug logging");
    sg::cli::add_common_options(app, std::string("streamgate-device-proxy ") + sg::version);
    sg::cli::add_default_env_names(app);
    if (int code = sg::cli::parse(app, argc, argv); code >= 0)
        return code;

    try {
        if (connection.empty())
            throw sg::config_error("a device connection string is required (argument, IOTHUB_DEVICE_CONN_STRING or connection-string in --config)");
        o.device = sg::parse_connection_string(connection);
        if (!o.device.is_device())
            throw sg::config_error("this is not a device connection string (it has no DeviceId)");
        for (auto& r : relays)
            o.relays.push_back(dp::parse_relay_address(r));
        for (auto& s : services)
            o.services.insert(dp::parse_service_mapping(s));
        if (o.services.empty()) {
            if (host.empty() || port <= 0 || port > 65535)
                throw sg::config_error("give <targetHost> <targetPort>, or at least one --service NAME=HOST:PORT");
            o.default_target = {host, static_cast<std::uint16_t>(port)};
        }
        if (!ca_file.empty())
            o.ca_file = ca_file;
        if (cert.empty() != key.empty())
            throw sg::config_error("--cert and --key go together");
        if (o.device.x509 && cert.empty())
            throw sg::config_error("the connection string says x509=true: give --cert and --key");
        if (!cert.empty()) {
            o.cert = cert;
            o.key = key;
        }
        o.stats_interval = std::chrono::seconds(std::max(0, stats));
        o.drain_timeout = std::chrono::seconds(std::max(0, drain));
        o.max_backoff = std::chrono::seconds(max_backoff);
        o.backoff_reset = std::chrono::seconds(backoff_reset);
        sg::client::set_proxy_settings(proxy.resolve());
        sg::client::set_warm_connections(warm_connections);
        sg::set_default_liveness(sg::liveness{std::chrono::seconds(30), std::chrono::seconds(std::max(1, ping_interval))});
        if (sg::cli::print_config_requested(app)) {
            std::cout << sg::cli::effective_config(app);
            return 0;
        }
        return dp::run(o);
    } catch (const sg::config_error& e) {
        sg::report_error("device-proxy", e.what());
        return 2;
    } catch (const std::exception& e) {
        sg::report_error("device-proxy", e.what());
        return 1;
    }
}
