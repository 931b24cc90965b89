// streamgate-service-proxy "<ServiceConnectionString>" <deviceId> <localPort>
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include "common/liveness.hpp"
#include "common/device_id.hpp"
#include "service-proxy/service_proxy.hpp"
#include "streamgate/version.hpp"

namespace {
std::string env_or(const std::string& value, const char* name)
{
    if (!value.empty())
        return value;
    const char* env = std::getenv(name);
    return env ? env : "";
}
} // namespace

int main(int argc, char** argv)
{
    namespace sp = sg::service_proxy;
    CLI::App app{"streamgate-service-proxy: runs beside the user. Listens on a local port (127.0.0.1 unless --bind) "
                 "and opens one stream to the device through the Streamgate relay for every local connection; with "
                 "--stdio carries one stream over stdin/stdout, for SSH's ProxyCommand:\n"
                 "  ssh -o ProxyCommand=\"streamgate-service-proxy --stdio '$SVC' %h\" user@MyDevice\n\n"
                 "Exit codes: 0 done, 1 the stream could not be opened or failed (stderr names the error code, "
                 "e.g. 404103 DeviceNotOnline), 2 usage."};
    std::string connection, device, port_text, ca_file;
    sp::options o;
    int connect_timeout = 60, response_timeout = 60;
    app.add_option("connection-string", connection, "Service connection string (or env IOTHUB_CONNECTION_STRING)");
    app.add_option("device-id", device, "Device to reach (or env STREAMING_TARGET_DEVICE)");
    app.add_option("local-port", port_text, "Local port to listen on (or env PROXY_PORT; 0 picks a free one)");
    app.add_flag("--stdio", o.stdio, "Carry one stream over stdin/stdout instead of listening");
    app.add_option("--bind", o.bind, "Local address to listen on")->capture_default_str();
    app.add_option("--stream-name", o.stream_name, "Stream name: which of the device's services to reach")
        ->capture_default_str();
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    app.add_option("--connect-timeout", connect_timeout, "Seconds both sides get to join the stream")->capture_default_str();
    app.add_option("--response-timeout", response_timeout, "Seconds the device gets to accept or reject")
        ->capture_default_str();
    app.add_option("--threads", o.threads, "I/O threads (default: one per core)");
    int ping_interval = 20, drain = 10;
    app.add_option("--ping-interval", ping_interval,
                   "Seconds of silence before the relay is pinged; dead after two intervals")->capture_default_str();
    app.add_option("--drain-timeout", drain, "Seconds live streams get to finish on SIGTERM")->capture_default_str();
    app.add_flag("-v,--verbose", o.verbose, "Debug logging");
    app.set_version_flag("--version", std::string("streamgate-service-proxy ") + sg::version);
    CLI11_PARSE(app, argc, argv);

    try {
        connection = env_or(connection, "IOTHUB_CONNECTION_STRING");
        o.device_id = env_or(device, "STREAMING_TARGET_DEVICE");
        port_text = env_or(port_text, "PROXY_PORT");
        if (connection.empty())
            throw sg::config_error("a service connection string is required (argument or IOTHUB_CONNECTION_STRING)");
        o.service = sg::parse_connection_string(connection);
        if (o.service.is_device())
            throw sg::config_error("this is a device connection string; the service proxy needs a service policy's");
        if (!sg::is_valid_device_id(o.device_id))
            throw sg::config_error("a valid device id is required (argument or STREAMING_TARGET_DEVICE)");
        if (!o.stdio) {
            int port = -1;
            try {
                std::size_t used = 0;
                port = std::stoi(port_text, &used);
                if (used != port_text.size())
                    port = -1;
            } catch (const std::exception&) {
            }
            if (port < 0 || port > 65535)
                throw sg::config_error("a local port is required (argument or PROXY_PORT), or --stdio");
            o.local_port = static_cast<std::uint16_t>(port);
        }
        if (!ca_file.empty())
            o.ca_file = ca_file;
        o.connect_timeout = std::chrono::seconds(std::clamp(connect_timeout, 1, 300));
        o.response_timeout = std::chrono::seconds(std::clamp(response_timeout, 1, 300));
        o.drain_timeout = std::chrono::seconds(std::max(0, drain));
        sg::set_default_liveness(sg::liveness{std::chrono::seconds(30), std::chrono::seconds(std::max(1, ping_interval))});
        return sp::run(o);
    } catch (const sg::config_error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
