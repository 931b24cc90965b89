#include "common/control_link.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

namespace sg {

control_link::control_link(std::shared_ptr<wss_stream> ws, std::size_t max_queued)
    : ws_(std::move(ws)), max_queued_(max_queued), wakeup_(ws_->get_executor())
{
    wakeup_.expires_at(asio::steady_timer::time_point::max());
}

asio::awaitable<error_code> control_link::run(const message_handler& on_message)
{
    using namespace asio::experimental::awaitable_operators;
    auto ended = co_await (read_loop(on_message) || write_loop());
    finished_ = true;
    queue_.clear();
    co_return std::visit([](const error_code& ec) { return ec; }, ended);
}

asio::awaitable<error_code> control_link::read_loop(const message_handler& on_message)
{
    beast::flat_buffer buffer;
    for (;;) {
        auto [ec, n] = co_await ws_->async_read(buffer, use_nothrow);
        if (ec)
            co_return ec;
        if (!ws_->got_text())
            co_return error_code(websocket::error::bad_data_frame);
        auto data = buffer.cdata();
        on_message(std::string_view(static_cast<const char*>(data.data()), data.size()));
        buffer.consume(buffer.size());
    }
}

asio::awaitable<error_code> control_link::write_loop()
{
    for (;;) {
        while (!queue_.empty()) {
            std::string message = std::move(queue_.front());
            queue_.pop_front();
            auto [ec, n] = co_await ws_->async_write(asio::buffer(message), use_nothrow);
            if (ec)
                co_return ec;
        }
        if (close_request_) {
            auto [ec] = co_await ws_->async_close(*close_request_, use_nothrow);
            co_return ec ? ec : error_code(websocket::error::closed);
        }
        woken_ = false;
        auto [ec] = co_await wakeup_.async_wait(use_nothrow);
        if (!woken_) // cancelled because the read side ended
            co_return ec ? ec : error_code(asio::error::operation_aborted);
    }
}

void control_link::wake()
{
    woken_ = true;
    wakeup_.cancel();
}

void control_link::send(std::string message)
{
    asio::dispatch(ws_->get_executor(), [self = shared_from_this(), message = std::move(message)]() mutable {
        if (self->finished_ || self->close_request_)
            return;
        if (self->queue_.size() >= self->max_queued_) {
            self->close_request_ = websocket::close_reason(websocket::close_code::policy_error, "control queue overflow");
            self->queue_.clear();
        } else {
            self->queue_.push_back(std::move(message));
        }
        self->wake();
    });
}

void control_link::close(websocket::close_reason reason)
{
    asio::dispatch(ws_->get_executor(), [self = shared_from_this(), reason] {
        if (self->finished_ || self->close_request_)
            return;
        self->close_request_ = reason;
        self->wake();
    });
}

} // namespace sg
