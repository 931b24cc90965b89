// streamgate-device-proxy "<DeviceConnectionString>" <targetHost> <targetPort>
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include "common/liveness.hpp"
#include "device-proxy/device_proxy.hpp"
#include "streamgate/version.hpp"

int main(int argc, char** argv)
{
    namespace dp = sg::device_proxy;
    CLI::App app{"streamgate-device-proxy: runs on the device. Keeps an outbound TLS control connection to the "
                 "Streamgate relay and, for every stream a service opens, connects to the local target and carries "
                 "the bytes. Reconnects when the relay is away; serves any number of streams at once.\n\n"
                 "Exit codes: 0 stopped by SIGTERM/SIGINT, 2 usage, 3 refused by the relay (--exit-on-auth-failure)."};
    std::string connection, host, ca_file;
    int port = 0, stats = 10;
    std::vector<std::string> services;
    dp::options o;
    app.add_option("connection-string", connection,
                   "Device connection string (or env IOTHUB_DEVICE_CONN_STRING): HostName=...;DeviceId=...;SharedAccessKey=...");
    app.add_option("target-host", host, "Default target host (e.g. localhost)");
    app.add_option("target-port", port, "Default target port (e.g. 22)");
    app.add_option("--service", services, "NAME=HOST:PORT: serve stream name NAME from HOST:PORT (repeatable); "
                                          "with any --service, unknown stream names are rejected");
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    std::string cert, key;
    app.add_option("--cert", cert, "Device certificate (PEM) for X.509 authentication (connection string with x509=true)");
    app.add_option("--key", key, "Private key for --cert (PEM)");
    app.add_option("--stats-interval", stats, "Seconds between traffic statistics lines (0 = off)")->capture_default_str();
    app.add_flag("--exit-on-auth-failure", o.exit_on_auth_failure, "Exit (code 3) when the relay refuses the credentials");
    app.add_option("--threads", o.threads, "I/O threads (default: one per core)");
    int ping_interval = 20, drain = 10;
    app.add_option("--ping-interval", ping_interval,
                   "Seconds of silence before the relay is pinged; dead after two intervals")->capture_default_str();
    app.add_option("--drain-timeout", drain, "Seconds live streams get to finish on SIGTERM")->capture_default_str();
    app.add_flag("-v,--verbose", o.verbose, "Debug logging");
    app.set_version_flag("--version", std::string("streamgate-device-proxy ") + sg::version);
    CLI11_PARSE(app, argc, argv);

    try {
        if (connection.empty())
            if (const char* env = std::getenv("IOTHUB_DEVICE_CONN_STRING"))
                connection = env;
        if (connection.empty())
            throw sg::config_error("a device connection string is required (argument or IOTHUB_DEVICE_CONN_STRING)");
        o.device = sg::parse_connection_string(connection);
        if (!o.device.is_device())
            throw sg::config_error("this is not a device connection string (it has no DeviceId)");
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
        sg::set_default_liveness(sg::liveness{std::chrono::seconds(30), std::chrono::seconds(std::max(1, ping_interval))});
        return dp::run(o);
    } catch (const sg::config_error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
