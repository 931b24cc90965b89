#include <boost/beast/http.hpp>
#include <ctime>
#include "common/client.hpp"
#include "common/crypto.hpp"
#include "common/protocol.hpp"
#include "common/sas_token.hpp"

namespace sg::client {
namespace http = beast::http;

device_connection::device_connection(std::shared_ptr<wss_stream> ws) : link_(std::make_shared<control_link>(std::move(ws)))
{
}

asio::awaitable<std::pair<failure, std::shared_ptr<device_connection>>>
device_connection::connect(asio::ssl::context& tls, const connection_string& device, std::chrono::seconds token_ttl)
{
    auto connected = co_await connect(tls, device, device.host(), device.port(), token_ttl);
    co_return connected;
}

asio::awaitable<std::pair<failure, std::shared_ptr<device_connection>>>
device_connection::connect(asio::ssl::context& tls, const connection_string& device, std::string relay_host,
                           std::uint16_t relay_port, std::chrono::seconds token_ttl)
{
    auto connected = co_await connect_tls(tls, relay_host, relay_port, std::chrono::seconds(30));
    auto& cf = std::get<0>(connected);
    auto& stream = std::get<1>(connected);
    if (cf)
        co_return std::pair{cf, nullptr};
    auto ws = std::make_shared<wss_stream>(std::move(*stream));
    configure_control_websocket(*ws, beast::role_type::client);
    std::string token;
    if (!device.shared_access_key.empty())
        token = make_sas_token(device.host_name + "/devices/" + device.device_id, device.shared_access_key, "",
                               static_cast<std::int64_t>(std::time(nullptr)) + token_ttl.count());
    ws->set_option(websocket::stream_base::decorator([token = std::move(token)](websocket::request_type& req) {
        if (!token.empty())
            req.set(http::field::authorization, token);
        req.set(http::field::user_agent, "streamgate/0.1");
    }));
    websocket::response_type res;
    std::string host = relay_host.find(':') != std::string::npos ? "[" + relay_host + "]" : relay_host;
    if (relay_port != 443)
        host += ":" + std::to_string(relay_port);
    auto [ec] = co_await ws->async_handshake(res, host, "/devices/" + url_encode(device.device_id) + "/streams", use_nothrow);
    if (ec) {
        if (res.result_int() != 0 && res.result() != http::status::switching_protocols)
            co_return std::pair{protocol::parse_error_body(res.body(), res.result_int()), nullptr};
        co_return std::pair{failure{0, "control connection handshake failed: " + ec.message()}, nullptr};
    }
    co_return std::pair{failure{}, std::make_shared<device_connection>(std::move(ws))};
}

asio::awaitable<failure> device_connection::run(const std::function<void(incoming_stream_request)>& on_request)
{
    failure protocol_error;
    control_link::message_handler on_message = [&](std::string_view text) {
        std::string error;
        auto m = protocol::parse_stream_request(text, error);
        if (!m) {
            // A relay speaking something else is not one to stay connected to.
            protocol_error = failure{0, "relay sent an invalid control message: " + error};
            link_->close(websocket::close_reason(websocket::close_code::protocol_error, "invalid control message"));
            return;
        }
        on_request(incoming_stream_request{m->request_id, m->stream_name, m->stream_id, m->url, m->authorization_token, m->lane});
    };
    auto ec = co_await link_->run(on_message);
    if (protocol_error)
        co_return protocol_error;
    auto reason = link_->remote_close_reason();
    if (ec == websocket::error::closed && !reason.reason.empty())
        co_return protocol::parse_close_reason(std::string_view(reason.reason.data(), reason.reason.size()));
    co_return failure{0, "control connection lost: " + ec.message()};
}

void device_connection::accept(const incoming_stream_request& request)
{
    link_->send(protocol::serialize(protocol::stream_response_message{request.request_id, true, {}}));
}

void device_connection::reject(const incoming_stream_request& request, const std::string& reason)
{
    link_->send(protocol::serialize(protocol::stream_response_message{request.request_id, false, reason}));
}

void device_connection::close()
{
    link_->close(websocket::close_reason(websocket::close_code::normal));
}

} // namespace sg::client
