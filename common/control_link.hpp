#pragma once
// A control connection: JSON text messages over a WebSocket, read by one loop and written by
// one loop from a bounded queue, so any thread may send without racing the stream.
// Used by the relay (its end of each device's connection) and by devices.
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <boost/asio/steady_timer.hpp>
#include "common/websocket.hpp"

namespace sg {

class control_link : public std::enable_shared_from_this<control_link> {
public:
    using message_handler = std::function<void(std::string_view)>;

    control_link(std::shared_ptr<wss_stream> ws, std::size_t max_queued = 1024);

    // Runs until the connection ends. on_message runs on the link's executor.
    asio::awaitable<error_code> run(const message_handler& on_message);
    // Thread-safe. A peer too slow to drain max_queued messages is disconnected.
    void send(std::string message);
    // Thread-safe: sends a close frame after the queued messages.
    void close(websocket::close_reason reason);

    asio::any_io_executor get_executor() const { return ws_->get_executor(); }
    // The reason the peer gave when it closed (valid after run returned).
    websocket::close_reason remote_close_reason() const { return ws_->reason(); }

private:
    asio::awaitable<error_code> read_loop(const message_handler& on_message);
    asio::awaitable<error_code> write_loop();
    void wake();

    std::shared_ptr<wss_stream> ws_;
    std::size_t max_queued_;
    std::deque<std::string> queue_;
    std::optional<websocket::close_reason> close_request_;
    asio::steady_timer wakeup_;
    bool finished_ = false;
    bool woken_ = false;
};

} // namespace sg
