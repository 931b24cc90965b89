// streamgate-echo-service "<ServiceConnectionString>" <deviceId> [message]: opens a stream,
// sends the message and prints the echo, like the service side of the echo quickstart.
#include <CLI/CLI.hpp>
#include <iostream>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include "common/client.hpp"
#include "common/config.hpp"
#include "common/log.hpp"
#include "common/proxy_cli.hpp"
#include "common/pump.hpp"
#include "common/tls.hpp"

namespace {
using namespace sg;

asio::awaitable<int> run(std::shared_ptr<asio::ssl::context> tls, connection_string service, client::stream_request request,
                         std::string message)
{
    auto created = co_await client::create_stream(*tls, service, request);
    auto& f = std::get<0>(created);
    auto& response = std::get<1>(created);
    if (f) {
        const std::string message_text = "cannot create a stream to " + request.device_id + ": " + f.describe();
        report_error("echo-service", message_text);
        co_return 1;
    }
    std::cout << "Stream response received: Name=" << response.stream_name
              << " IsAccepted=" << (response.accepted ? "True" : "False") << std::endl;
    if (!response.accepted) {
        const std::string message_text = "the device rejected the stream: " + response.reason;
        report_error("echo-service", message_text);
        co_return 1;
    }
    auto joined = co_await client::connect_stream(*tls, response);
    auto& jf = std::get<0>(joined);
    auto& ws = std::get<1>(joined);
    if (jf) {
        const std::string message_text = "cannot join the stream: " + jf.describe();
        report_error("echo-service", message_text);
        co_return 1;
    }
    std::cout << "Starting streaming" << std::endl;
    ws_end end(ws);
    error_code wec = co_await end.write(asio::buffer(message));
    if (!wec)
        wec = co_await end.write_eof();
    std::string echoed;
    std::vector<char> buffer(max_stream_message);
    error_code rec;
    for (;;) {
        auto [ec, n] = co_await end.read(asio::buffer(buffer));
        rec = ec;
        if (ec)
            break;
        echoed.append(buffer.data(), n);
    }
    co_await end.close();
    if (wec || rec != asio::error::eof) {
        const std::string message_text = "stream failed: " + (wec ? wec : rec).message();
        report_error("echo-service", message_text);
        co_return 1;
    }
    std::cout << "Received stream data: " << echoed << std::endl;
    std::cout << "Done streaming" << std::endl;
    co_return echoed == message ? 0 : 1;
}
} // namespace

int main(int argc, char** argv)
{
    CLI::App app{"streamgate-echo-service: the service side of the echo sample; opens a stream to the device, sends "
                 "a message and prints what comes back.\n\nExit codes: 0 the echo matches, 1 the stream failed or the "
                 "echo differs, 2 usage or config error.",
                 "streamgate-echo-service"};
    std::string connection, device, ca_file, message = "Streaming data over a stream...";
    sg::client::stream_request request;
    app.add_option("connection-string,--connection-string", connection, "Service connection string (required)")
        ->envname("IOTHUB_CONNECTION_STRING");
    app.add_option("device-id,--device-id", device, "Device id (required)")->envname("STREAMING_TARGET_DEVICE");
    app.add_option("message", message, "Text to send")->capture_default_str();
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    app.add_option("--stream-name", request.stream_name, "Stream name")->capture_default_str();
    sg::proxy_cli proxy;
    sg::add_proxy_options(app, proxy);
    sg::cli::add_common_options(app, "streamgate-echo-service 0.1.0");
    sg::cli::add_default_env_names(app);
    if (int code = sg::cli::parse(app, argc, argv); code >= 0)
        return code;
    try {
        auto service = sg::parse_connection_string(connection);
        if (service.is_device())
            throw sg::config_error("a service connection string is required");
        request.device_id = device;
        if (sg::cli::print_config_requested(app)) {
            std::cout << sg::cli::effective_config(app);
            return 0;
        }
        sg::client::set_proxy_settings(proxy.resolve());
        auto tls = std::make_shared<boost::asio::ssl::context>(
            sg::make_client_tls_context(ca_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(ca_file)));
        boost::asio::io_context ioc;
        int result = 1;
        boost::asio::co_spawn(ioc, run(tls, service, request, message), [&](std::exception_ptr e, int r) {
            result = e ? 1 : r;
        });
        ioc.run();
        return result;
    } catch (const std::exception& e) {
        sg::report_error("echo-service", e.what());
        return 2;
    }
}
