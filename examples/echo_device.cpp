// streamgate-echo-device "<DeviceConnectionString>": accepts every stream and echoes what it
// receives, like the device side of the device streams echo quickstart (but keeps serving).
#include <CLI/CLI.hpp>
#include <iostream>
#include <random>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include "common/client.hpp"
#include "common/config.hpp"
#include "common/log.hpp"
#include "common/proxy_cli.hpp"
#include "common/pump.hpp"
#include "common/tls.hpp"

namespace {
using namespace sg;

asio::awaitable<void> echo(std::shared_ptr<asio::ssl::context> tls, client::incoming_stream_request req)
{
    auto joined = co_await client::connect_stream(*tls, req.url, req.authorization_token);
    auto& f = std::get<0>(joined);
    auto& ws = std::get<1>(joined);
    if (f) {
        make_logger("echo-device")->warn("cannot join stream {}: {}", req.stream_id, f.describe());
        co_return;
    }
    ws_end end(ws);
    std::vector<char> buffer(max_stream_message);
    for (;;) {
        auto [ec, n] = co_await end.read(asio::buffer(buffer));
        if (ec == asio::error::eof) {
            (void)co_await end.write_eof();
            break;
        }
        if (ec)
            break;
        std::string_view text(buffer.data(), n);
        std::cout << "Received stream data: " << text << std::endl;
        error_code wec = co_await end.write(asio::buffer(buffer.data(), n));
        if (wec)
            break;
        std::cout << "Sent stream data: " << text << std::endl;
    }
    co_await end.close();
    std::cout << "Done." << std::endl;
}

asio::awaitable<void> serve(asio::io_context& ioc, std::shared_ptr<asio::ssl::context> tls, connection_string device)
{
    asio::steady_timer pause(co_await asio::this_coro::executor);
    for (;;) {
        auto connection = co_await client::device_connection::connect(*tls, device);
        auto& f = std::get<0>(connection);
        auto& conn = std::get<1>(connection);
        if (!f) {
            make_logger("echo-device")->info("Connected to {} as {}; waiting for streams", device.host_name,
                                             device.device_id);
            std::function<void(client::incoming_stream_request)> on_request = [&ioc, tls, conn](client::incoming_stream_request req) {
                conn->accept(req);
                asio::co_spawn(asio::make_strand(ioc), echo(tls, std::move(req)), asio::detached);
            };
            auto lost = co_await conn->run(on_request);
            f = lost;
        }
        make_logger("echo-device")->warn("Control connection: {}; retrying in 2s", f.describe());
        pause.expires_after(std::chrono::seconds(2));
        co_await pause.async_wait(use_nothrow);
    }
}
} // namespace

int main(int argc, char** argv)
{
    CLI::App app{"streamgate-echo-device: the device side of the echo sample; accepts every stream request and "
                 "echoes the data back. Runs until interrupted.\n\nExit codes: 0 stopped by SIGTERM/SIGINT, 2 usage "
                 "or config error.",
                 "streamgate-echo-device"};
    std::string connection, ca_file;
    app.add_option("connection-string,--connection-string", connection, "Device connection string (required)")
        ->envname("IOTHUB_DEVICE_CONN_STRING");
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    sg::proxy_cli proxy;
    sg::add_proxy_options(app, proxy);
    sg::cli::add_common_options(app, "streamgate-echo-device 0.1.0");
    sg::cli::add_default_env_names(app);
    if (int code = sg::cli::parse(app, argc, argv); code >= 0)
        return code;
    try {
        auto device = sg::parse_connection_string(connection);
        if (!device.is_device())
            throw sg::config_error("a device connection string is required");
        if (sg::cli::print_config_requested(app)) {
            std::cout << sg::cli::effective_config(app);
            return 0;
        }
        sg::client::set_proxy_settings(proxy.resolve());
        auto tls = std::make_shared<boost::asio::ssl::context>(
            sg::make_client_tls_context(ca_file.empty() ? std::nullopt : std::optional<std::filesystem::path>(ca_file)));
        boost::asio::io_context ioc;
        boost::asio::co_spawn(ioc, serve(ioc, tls, device), boost::asio::detached);
        boost::asio::signal_set signals(ioc, SIGINT, SIGTERM);
        signals.async_wait([&](const boost::system::error_code&, int) { ioc.stop(); });
        ioc.run();
        return 0;
    } catch (const std::exception& e) {
        sg::report_error("echo-device", e.what());
        return 2;
    }
}
