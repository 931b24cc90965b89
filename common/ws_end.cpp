#include "common/pump.hpp"

#include <boost/asio/detached.hpp>

namespace sg {

asio::awaitable<std::tuple<error_code, std::size_t>> ws_end::read(read_buffer& buffer)
{
    // The wait for the next message holds only the small part; a message that does not fit
    // there continues into the full chunk (its bytes are in flight already).
    auto& ws = *shared_->ws;
    if (buffer.holds_full() && ws.next_layer().has_buffered_input()) {
        // Data is streaming and the next message has begun to arrive: read it straight into the
        // chunk (a small first read would leave the rest of Beast's read buffer to a second read
        // that completes without I/O, through the io_context's queue).
        auto whole = co_await read(buffer.full());
        co_return whole;
    }
    buffer.release();
    auto first = co_await ws.async_read_some(buffer.small(), use_nothrow);
    auto ec = std::get<0>(first);
    std::size_t total = std::get<1>(first);
    if (ec)
        co_return std::tuple{ec, total};
    if (ws.got_text())
        co_return std::tuple{error_code(websocket::error::bad_data_frame), std::size_t{0}};
    if (ws.is_message_done()) {
        if (total == 0)
            co_return std::tuple{error_code(asio::error::eof), std::size_t{0}};
        co_return std::tuple{error_code{}, total};
    }
    auto rest = co_await read(buffer.full(total) + total);
    ec = std::get<0>(rest);
    total += std::get<1>(rest);
    if (ec == asio::error::eof) // the message's first bytes were data, not the end of stream
        ec = {};
    co_return std::tuple{ec, total};
}

asio::awaitable<std::tuple<error_code, std::size_t>> ws_end::read(asio::mutable_buffer buffer)
{
    // One whole message per read, so the relay forwards frames as they came instead of
    // splitting them into many small frames and TLS records.
    auto& ws = *shared_->ws;
    std::size_t total = 0;
    do {
        auto [ec, n] = co_await ws.async_read_some(asio::buffer(buffer + total), use_nothrow);
        total += n;
        if (ec)
            co_return std::tuple{ec, total};
        if (ws.got_text())
            co_return std::tuple{error_code(websocket::error::bad_data_frame), std::size_t{0}};
    } while (!ws.is_message_done() && total < buffer.size());
    if (total == 0)
        co_return std::tuple{error_code(asio::error::eof), std::size_t{0}};
    co_return std::tuple{error_code{}, total};
}

asio::awaitable<error_code> ws_end::write(asio::const_buffer data)
{
    auto [ec, n] = co_await shared_->ws->async_write(data, use_nothrow);
    co_return ec;
}

asio::awaitable<error_code> ws_end::write_eof()
{
    auto [ec, n] = co_await shared_->ws->async_write(asio::const_buffer{}, use_nothrow);
    co_return ec;
}

asio::awaitable<void> ws_end::close()
{
    if (kept_open_)
        co_return;
    if (shared_->closing.exchange(true))
        co_return;
    co_await shared_->ws->async_close(websocket::close_code::normal, use_nothrow);
}

namespace {
asio::awaitable<void> close_after_failure(std::shared_ptr<wss_stream> ws, websocket::close_reason reason)
{
    auto [ec] = co_await ws->async_close(reason, use_nothrow);
    if (ec) {
        error_code ignored;
        beast::get_lowest_layer(*ws).socket().close(ignored);
    }
}
} // namespace

void ws_end::abort(bool peer_failed)
{
    if (shared_->closing.exchange(true))
        return;
    // 1011 is what device streams clients saw when the other side went away.
    websocket::close_reason reason(peer_failed ? websocket::close_code::internal_error : websocket::close_code::normal,
                                   peer_failed ? "stream ended: peer disconnected" : "");
    asio::co_spawn(shared_->ws->get_executor(), close_after_failure(shared_->ws, reason), asio::detached);
}

} // namespace sg
