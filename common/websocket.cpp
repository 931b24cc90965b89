#include "common/websocket.hpp"

#include <boost/asio/ssl/error.hpp>

namespace sg {

namespace {
liveness process_liveness;
} // namespace

void set_default_liveness(const liveness& l) { process_liveness = l; }
const liveness& default_liveness() { return process_liveness; }

namespace {
void configure_common(wss_stream& ws, beast::role_type role, const liveness& l)
{
    websocket::stream_base::timeout t{};
    t.handshake_timeout = l.handshake_timeout;
    // Beast pings after half the idle timeout and gives up after the whole of it.
    t.idle_timeout = 2 * l.ping_interval;
    t.keep_alive_pings = true;
    ws.set_option(t);
    ws.set_option(websocket::permessage_deflate{}); // off: compression costs 40x throughput
    ws.next_layer().expires_never();                // the websocket timeouts take over
    (void)role;
}
} // namespace

void configure_stream_websocket(wss_stream& ws, beast::role_type role, const liveness& l)
{
    configure_common(ws, role, l);
    ws.binary(true);
    ws.auto_fragment(false);
    ws.write_buffer_bytes(max_stream_message);
    ws.read_message_max(max_stream_message);
}

void configure_control_websocket(wss_stream& ws, beast::role_type role, std::size_t max_message, const liveness& l)
{
    configure_common(ws, role, l);
    ws.text(true);
    ws.read_message_max(max_message);
}

bool is_benign(const error_code& ec)
{
    return !ec || ec == asio::error::eof || ec == asio::error::operation_aborted ||
           ec == websocket::error::closed || ec == asio::ssl::error::stream_truncated;
}

} // namespace sg
