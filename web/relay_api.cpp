// The relay's registry REST API, as the device list needs it: GET /devices signed with the
// registry policy (RegistryRead).
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include "common/client.hpp"
#include "common/protocol.hpp"
#include "common/sas_token.hpp"
#include "web/internal.hpp"

namespace sg::web {

namespace http = beast::http;

asio::awaitable<std::pair<failure, std::vector<device_entry>>> list_devices(gateway_state& state)
{
    std::vector<device_entry> out;
    const auto& reg = state.opts.registry;
    auto connected = co_await client::connect_tls(*state.relay_tls, reg.host(), reg.port(), std::chrono::seconds(10));
    auto& cf = std::get<0>(connected);
    auto& stream = std::get<1>(connected);
    if (cf)
        co_return std::pair{cf, out};
    http::request<http::empty_body> req{http::verb::get, "/devices?api-version=2020-09-30", 11};
    req.set(http::field::host, reg.port() == 443 ? reg.host() : reg.host() + ":" + std::to_string(reg.port()));
    req.set(http::field::user_agent, "streamgate-web/0.1");
    auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch());
    req.set(http::field::authorization,
            make_sas_token(reg.host_name, reg.shared_access_key, reg.shared_access_key_name, now.count() + 300));
    req.keep_alive(false);
    stream->expires_after(std::chrono::seconds(10));
    auto written = co_await http::async_write(*stream, req, use_nothrow);
    if (std::get<0>(written))
        co_return std::pair{failure{0, "cannot ask the relay for devices: " + std::get<0>(written).message()}, out};
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(8 * 1024 * 1024);
    auto read = co_await http::async_read(*stream, buffer, parser, use_nothrow);
    error_code ignored;
    beast::get_lowest_layer(*stream).socket().close(ignored);
    if (std::get<0>(read))
        co_return std::pair{failure{0, "no device list from the relay: " + std::get<0>(read).message()}, out};
    auto& res = parser.get();
    if (res.result() != http::status::ok)
        co_return std::pair{protocol::parse_error_body(res.body(), res.result_int()), out};
    boost::json::error_code jec;
    auto body = boost::json::parse(res.body(), jec);
    if (jec || !body.is_array())
        co_return std::pair{failure{0, "the relay's device list is not a JSON array"}, out};
    for (auto& d : body.as_array()) {
        if (!d.is_object())
            continue;
        auto* id = d.as_object().if_contains("deviceId");
        auto* st = d.as_object().if_contains("connectionState");
        if (id && id->is_string())
            out.push_back({std::string(id->as_string()), st && st->is_string() && st->as_string() == "Connected"});
    }
    co_return std::pair{failure{}, out};
}

} // namespace sg::web
