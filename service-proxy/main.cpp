// streamgate-service-proxy "<ServiceConnectionString>" <deviceId> <localPort>
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include "common/client.hpp"
#include "common/config.hpp"
#include "common/liveness.hpp"
#include "common/log.hpp"
#include "common/proxy_cli.hpp"
#include "common/device_id.hpp"
#include "service-proxy/service_proxy.hpp"
#include "streamgate/version.hpp"

int main(int argc, char** argv)
{
    namespace sp = sg::service_proxy;
    CLI::App app{"streamgate-service-proxy: runs beside the user. Listens on a local port (127.0.0.1 unless --bind) "
                 "and opens one stream to the device through the Streamgate relay for every local connection; with "
                 "--stdio carries one stream over stdin/stdout, for SSH's ProxyCommand:\n"
                 "  ssh -o ProxyCommand=\"streamgate-service-proxy --stdio '$SVC' %h\" user@MyDevice\n\n"
                 "Settings come from the command line, then environment variables (shown as Env), then --config "
                 "FILE (TOML), then the defaults shown.\n\n"
                 "Exit codes: 0 done, 1 the stream could not be opened or failed (stderr names the error code, "
                 "e.g. 404103 DeviceNotOnline), 2 usage or config error.",
                 "streamgate-service-proxy"};
    std::string connection, device, port_text, ca_file;
    sp::options o;
    int connect_timeout = 60, response_timeout = 60;
    app.add_option("connection-string,--connection-string", connection,
                   "Service connection string: HostName=...;SharedAccessKeyName=...;SharedAccessKey=... (required)")
        ->envname("IOTHUB_CONNECTION_STRING");
    app.add_option("device-id,--device-id", device, "Device to reach (required)")->envname("STREAMING_TARGET_DEVICE");
    app.add_option("local-port,--local-port", port_text, "Local port to listen on; 0 picks a free one (required unless --stdio)")
        ->envname("PROXY_PORT");
    app.add_flag("--stdio", o.stdio, "Carry one stream over stdin/stdout instead of listening");
    app.add_option("--bind", o.bind, "Local address to listen on")->capture_default_str();
    app.add_option("--stream-name", o.stream_name, "Stream name: which of the device's services to reach")
        ->capture_default_str();
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    app.add_option("--connect-timeout", connect_timeout, "Seconds both sides get to join the stream")->capture_default_str();
    app.add_option("--response-timeout", response_timeout, "Seconds the device gets to accept or reject")
        ->capture_default_str();
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
    sg::proxy_cli proxy;
    sg::add_proxy_options(app, proxy);
    app.add_flag("-v,--verbose", o.verbose, "Debug logging");
    sg::cli::add_common_options(app, std::string("streamgate-service-proxy ") + sg::version);
    sg::cli::add_default_env_names(app);
    if (int code = sg::cli::parse(app, argc, argv); code >= 0)
        return code;

    try {
        o.device_id = device;
        if (connection.empty())
            throw sg::config_error("a service connection string is required (argument, IOTHUB_CONNECTION_STRING or connection-string in --config)");
        o.service = sg::parse_connection_string(connection);
        if (o.service.is_device())
            throw sg::config_error("this is a device connection string; the service proxy needs a service policy's");
        if (!sg::is_valid_device_id(o.device_id))
            throw sg::config_error("a valid device id is required (argument, STREAMING_TARGET_DEVICE or device-id in --config)");
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
                throw sg::config_error("a local port is required (argument, PROXY_PORT or local-port in --config), or --stdio");
            o.local_port = static_cast<std::uint16_t>(port);
        }
        if (!ca_file.empty())
            o.ca_file = ca_file;
        o.connect_timeout = std::chrono::seconds(std::clamp(connect_timeout, 1, 300));
        o.response_timeout = std::chrono::seconds(std::clamp(response_timeout, 1, 300));
        o.drain_timeout = std::chrono::seconds(std::max(0, drain));
        sg::client::set_proxy_settings(proxy.resolve());
        sg::client::set_warm_connections(warm_connections);
        sg::set_default_liveness(sg::liveness{std::chrono::seconds(30), std::chrono::seconds(std::max(1, ping_interval))});
        if (sg::cli::print_config_requested(app)) {
            std::cout << sg::cli::effective_config(app);
            return 0;
        }
        return sp::run(o);
    } catch (const sg::config_error& e) {
        sg::report_error("service-proxy", e.what());
        return 2;
    } catch (const std::exception& e) {
        sg::report_error("service-proxy", e.what());
        return 1;
    }
}
