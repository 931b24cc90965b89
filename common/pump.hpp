#pragma once
// The byte pump: the one data path shared by the relay and both proxies.
//
// Two ends, two directions, each direction a loop of read -> write -> read with one fixed
// buffer and one outstanding write, so a slow reader slows the sender instead of filling
// memory. End of stream travels on: a TCP FIN becomes an empty WebSocket message and an empty
// message becomes a FIN, so half-closed connections keep working. Any other error aborts both
// ends. The ends may live on different strands (the relay pairs two connections): every
// operation runs on its own end's executor.
//
// Memory: a direction holds its full chunk only while a large read and its write are in flight.
// Between messages it keeps a few hundred bytes (read_buffer), so an idle stream costs little and
// a keystroke never needs the 64 KiB buffer.
//
// An End provides:
//   any_io_executor executor();
//   awaitable<tuple<error_code, size_t>> read(read_buffer&);      // data at buffer.data(); or
//   awaitable<tuple<error_code, size_t>> read(mutable_buffer);    //   (then the chunk is always held)
//                                                                 // asio::error::eof at end of stream
//   awaitable<error_code> write(const_buffer);
//   awaitable<error_code> write_eof();
//   awaitable<void> close();                                      // after both directions ended cleanly
//   void abort(bool peer_failed);                                 // from any thread, idempotent
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include "common/block_pool.hpp"
#include "common/websocket.hpp"

namespace sg {

struct pump_result {
    std::uint64_t bytes_a_to_b = 0;
    std::uint64_t bytes_b_to_a = 0;
    error_code error; // the first error that ended the stream; empty when both sides ended cleanly
};

// Live totals a process may read while streams run (traffic statistics).
struct pump_counters {
    std::atomic<std::uint64_t> a_to_b{0};
    std::atomic<std::uint64_t> b_to_a{0};
};

// Runs op on ex, hopping there and back when it is not the current executor.
template <class T>
asio::awaitable<T> on_executor(asio::any_io_executor ex, asio::awaitable<T> op)
{
    // Kept as plain statements: g++ 12 miscompiles co_await inside conditions and co_return.
    auto current = co_await asio::this_coro::executor;
    if (ex == current) {
        T local = co_await std::move(op);
        co_return local;
    }
    T hopped = co_await asio::co_spawn(ex, std::move(op), asio::use_awaitable);
    co_return hopped;
}

// The buffer of one direction: a small inline part for small reads, and the full chunk, taken
// from the heap only when a read will fill more than the small part and given back afterwards.
class read_buffer {
public:
    static constexpr std::size_t small_size = 512;
    using chunk_pool = block_pool<stream_chunk, 4>;
    explicit read_buffer(std::size_t chunk) : chunk_(chunk) {}
    ~read_buffer() { release(); }
    read_buffer(const read_buffer&) = delete;
    read_buffer& operator=(const read_buffer&) = delete;

    asio::mutable_buffer small() { return asio::buffer(small_); }
    // The full chunk, its first `kept` bytes copied from small().
    asio::mutable_buffer full(std::size_t kept = 0)
    {
        if (!big_) // not zeroed: a read fills what is used
            big_ = chunk_pool::take(chunk_);
        if (kept)
            std::memcpy(big_.get(), small_.data(), kept);
        in_big_ = true;
        return asio::buffer(big_.get(), chunk_);
    }
    // Where the last read put its bytes.
    const char* data() const { return in_big_ ? big_.get() : small_.data(); }
    // Before waiting for data that may not come for a long time.
    void release()
    {
        chunk_pool::give(std::move(big_), chunk_);
        in_big_ = false;
    }
    void use_small() { in_big_ = false; }
    // The last read needed the full chunk (data is streaming: read into it again at once).
    bool holds_full() const { return in_big_; }
    std::size_t chunk() const { return chunk_; }

private:
    std::array<char, small_size> small_;
    std::unique_ptr<char[]> big_;
    std::size_t chunk_;
    bool in_big_ = false;
};

namespace detail {

template <class End>
concept reads_into_read_buffer = requires(End e, read_buffer& b) { e.read(b); };

struct pump_state {
    std::atomic<bool> failed{false};
    std::mutex mutex;
    error_code first_error;

    // Returns true for the first failure only.
    bool fail(const error_code& ec)
    {
        std::lock_guard lock(mutex);
        if (failed.exchange(true))
            return false;
        first_error = ec;
        return true;
    }
};

template <class From, class To>
asio::awaitable<void> transfer(From from, To to, std::uint64_t& counter, std::shared_ptr<pump_state> state,
                               std::size_t chunk, std::atomic<std::uint64_t>* live)
{
    read_buffer buffer(chunk);
    auto abort_both = [&](const error_code& ec) {
        if (state->fail(ec)) {
            from.abort(true);
            to.abort(true);
        }
    };
    for (;;) {
        error_code read_error;
        std::size_t n = 0;
        if constexpr (reads_into_read_buffer<From>) {
            auto got = co_await from.read(buffer);
            read_error = std::get<0>(got);
            n = std::get<1>(got);
        } else {
            auto got = co_await from.read(buffer.full());
            read_error = std::get<0>(got);
            n = std::get<1>(got);
        }
        if (read_error == asio::error::eof) {
            error_code ec = co_await on_executor(to.executor(), to.write_eof());
            if (ec)
                abort_both(ec);
            co_return;
        }
        if (read_error) {
            abort_both(read_error);
            co_return;
        }
        if (state->failed)
            co_return;
        error_code ec = co_await on_executor(to.executor(), to.write(asio::buffer(buffer.data(), n)));
        if (ec) {
            abort_both(ec);
            co_return;
        }
        counter += n;
        if (live)
            live->fetch_add(n, std::memory_order_relaxed);
    }
}

} // namespace detail

template <class A, class B>
asio::awaitable<pump_result> pump(A a, B b, std::size_t chunk = stream_chunk, pump_counters* live = nullptr)
{
    using namespace asio::experimental::awaitable_operators;
    auto state = std::make_shared<detail::pump_state>();
    pump_result result;
    co_await (asio::co_spawn(a.executor(), detail::transfer(a, b, result.bytes_a_to_b, state, chunk, live ? &live->a_to_b : nullptr), asio::use_awaitable) &&
              asio::co_spawn(b.executor(), detail::transfer(b, a, result.bytes_b_to_a, state, chunk, live ? &live->b_to_a : nullptr), asio::use_awaitable));
    if (!state->failed) {
        co_await (asio::co_spawn(a.executor(), a.close(), asio::use_awaitable) &&
                  asio::co_spawn(b.executor(), b.close(), asio::use_awaitable));
    }
    result.error = state->first_error;
    co_return result;
}

// A plain TCP connection (the local side of a proxy).
class tcp_end {
public:
    explicit tcp_end(std::shared_ptr<tcp::socket> socket) : socket_(std::move(socket))
    {
        error_code ignored; // reads and writes below try the socket before they wait for it
        socket_->non_blocking(true, ignored);
    }
    asio::any_io_executor executor() const { return socket_->get_executor(); }

    // While data streams, reads straight into the full chunk (one system call). Otherwise gives
    // the chunk back and reads into the small part, waiting there (the reactor's read: no
    // re-arming of the descriptor per wait, as an async_wait costs); when that comes back full
    // there is more, read on into the full chunk (two system calls for a burst, one for a
    // keystroke, none spent asking how much is there).
    asio::awaitable<std::tuple<error_code, std::size_t>> read(read_buffer& buffer)
    {
        error_code ec;
        if (deferred_error_) {
            ec = std::exchange(deferred_error_, {});
            co_return std::tuple{ec, std::size_t{0}};
        }
        if (buffer.holds_full()) {
            std::size_t n = socket_->read_some(buffer.full(), ec);
            if (!would_block(ec))
                co_return std::tuple{ec, n};
            buffer.release();
        }
        buffer.use_small();
        auto got = co_await socket_->async_read_some(buffer.small(), use_nothrow);
        ec = std::get<0>(got);
        std::size_t n = std::get<1>(got);
        if (ec || n < read_buffer::small_size)
            co_return std::tuple{ec, n};
        error_code more_ec;
        n += socket_->read_some(buffer.full(n) + n, more_ec);
        // What the first read got is delivered now; an error of the second on the next read.
        if (more_ec && !would_block(more_ec))
            deferred_error_ = more_ec;
        co_return std::tuple{error_code{}, n};
    }
    asio::awaitable<error_code> write(asio::const_buffer data)
    {
        // Usually the whole buffer fits in the socket at once: no wait, no handler.
        error_code ec;
        std::size_t written = socket_->write_some(data, ec);
        if (!ec || would_block(ec)) {
            data += written;
            if (data.size() == 0)
                co_return error_code{};
            auto rest = co_await asio::async_write(*socket_, data, use_nothrow);
            co_return std::get<0>(rest);
        }
        co_return ec;
    }
    asio::awaitable<error_code> write_eof()
    {
        error_code ec;
        socket_->shutdown(tcp::socket::shutdown_send, ec);
        co_return ec;
    }
    asio::awaitable<void> close()
    {
        error_code ec;
        socket_->close(ec);
        co_return;
    }
    void abort(bool)
    {
        asio::post(socket_->get_executor(), [socket = socket_] {
            error_code ec;
            socket->close(ec);
        });
    }

private:
    static bool would_block(const error_code& ec)
    {
        return ec == asio::error::would_block || ec == asio::error::try_again;
    }
    std::shared_ptr<tcp::socket> socket_;
    error_code deferred_error_; // of this copy's reads (each direction reads its own copy)
};

// A TLS connection carrying bytes as they come (the relay forwarding a WebSocket, still in its
// frames, to the stream's node); close_notify is end of stream.
class tls_end {
public:
    explicit tls_end(std::shared_ptr<tls_stream> stream) : stream_(std::move(stream)) {}
    asio::any_io_executor executor() const { return stream_->get_executor(); }

    asio::awaitable<std::tuple<error_code, std::size_t>> read(asio::mutable_buffer buffer)
    {
        auto [ec, n] = co_await stream_->async_read_some(buffer, use_nothrow);
        co_return std::tuple{ec, n};
    }
    asio::awaitable<error_code> write(asio::const_buffer data)
    {
        auto [ec, n] = co_await asio::async_write(*stream_, data, use_nothrow);
        co_return ec;
    }
    asio::awaitable<error_code> write_eof()
    {
        auto [ec] = co_await stream_->async_send_close_notify(use_nothrow);
        co_return ec;
    }
    asio::awaitable<void> close()
    {
        error_code ec;
        stream_->next_layer().socket().close(ec);
        co_return;
    }
    void abort(bool)
    {
        asio::post(stream_->get_executor(), [stream = stream_] {
            error_code ec;
            stream->next_layer().socket().close(ec);
        });
    }

private:
    std::shared_ptr<tls_stream> stream_;
};

// A WebSocket carrying raw bytes in binary messages; an empty message is end of stream.
// kept_open: after both directions ended cleanly the connection stays open for a next stream
// (close() leaves it alone); a failure still closes it.
class ws_end {
public:
    explicit ws_end(std::shared_ptr<wss_stream> ws, bool kept_open = false)
        : shared_(std::make_shared<shared>(std::move(ws))), kept_open_(kept_open)
    {
    }
    asio::any_io_executor executor() const { return shared_->ws->get_executor(); }
    wss_stream& stream() const { return *shared_->ws; }

    // One whole message per read (the relay forwards frames as they came).
    asio::awaitable<std::tuple<error_code, std::size_t>> read(read_buffer& buffer);
    asio::awaitable<std::tuple<error_code, std::size_t>> read(asio::mutable_buffer buffer);
    asio::awaitable<error_code> write(asio::const_buffer data);
    asio::awaitable<error_code> write_eof();
    asio::awaitable<void> close();
    void abort(bool peer_failed);

private:
    struct shared {
        explicit shared(std::shared_ptr<wss_stream> w) : ws(std::move(w)) {}
        std::shared_ptr<wss_stream> ws;
        std::atomic<bool> closing{false};
    };
    std::shared_ptr<shared> shared_;
    bool kept_open_;
};

} // namespace sg
