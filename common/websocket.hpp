#pragma once
// The WebSocket-over-TLS stream every Streamgate connection uses, and the settings shared by
// the relay and the clients. Include only from translation units that do network I/O: Beast
// templates are expensive to compile.
#include <chrono>
#include <cstddef>
#include <memory>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include "common/liveness.hpp"
#include "common/tls_stream.hpp"

namespace sg {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;

using wss_stream = websocket::stream<tls_stream>;

// Completion token for coroutines that inspect errors instead of catching exceptions.
// A result holding objects with destructors (shared_ptr, string, socket) is stored in a named
// variable and its parts taken with std::get: g++ 12 releases objects reached through structured
// bindings a second time when a suspended coroutine frame is destroyed (heap corruption at exit).
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

// Raw bytes travel in binary messages of at most this size (the seeds' 64 KiB frames).
constexpr std::size_t max_stream_message = 64 * 1024;
// What the pump reads and sends as one message: 16 bytes short of 64 KiB, so a message and its
// frame header (4 bytes, 8 masked) fill exactly four TLS records. A 64 KiB message needs a
// 10-14 byte header and a fifth record for its last bytes, decrypted and encrypted on its own
// in every hop.
constexpr std::size_t stream_chunk = 4 * 16 * 1024 - 16;
static_assert(stream_chunk + 8 <= 4 * 16 * 1024 && stream_chunk < 65536, "a 16-bit length and four records");
// Control messages are small JSON documents.
constexpr std::size_t max_control_message = 16 * 1024;


// Options for a stream that carries raw bytes: binary, unfragmented 64 KiB messages,
// no compression, keepalive pings.
void configure_stream_websocket(wss_stream& ws, beast::role_type role, const liveness& l = default_liveness());
// Options for a control connection: text messages of at most max_control_message.
void configure_control_websocket(wss_stream& ws, beast::role_type role, std::size_t max_message = max_control_message,
                                 const liveness& l = default_liveness());

// Normal endings of a connection that need no error log.
bool is_benign(const error_code& ec);

} // namespace sg
