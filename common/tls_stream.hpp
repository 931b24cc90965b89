#pragma once
// The TLS stream of every Streamgate connection (relay and both proxies), in place of Asio's
// ssl::stream. OpenSSL reads the socket itself through a BIO of ours, so one recv fetches as
// many records as have arrived, and SSL_read copies the plaintext into the caller's buffer (no
// engine buffer in between); records written go into one buffer that leaves in one send per
// message; OpenSSL's record buffers are held only while data is in flight
// (SSL_MODE_RELEASE_BUFFERS), and there is no BIO pair per connection. Asio's reactor says when
// the socket is ready.
//
// The interface is the part of beast::ssl_stream<beast::tcp_stream> Streamgate used, so Beast's
// HTTP and WebSocket code runs over it: at most one read and one write outstanding, both from
// the stream's executor (or strand). next_layer() is the beast::tcp_stream for connecting (with
// its own connect timeout); the deadline of TLS, HTTP and WebSocket operations is this stream's
// expires_after.
#include <array>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <boost/beast/core/role.hpp>
#include <boost/beast/core/tcp_stream.hpp>

typedef struct ssl_st SSL;

namespace sg {

class tls_stream {
public:
    using executor_type = boost::asio::any_io_executor;
    using next_layer_type = boost::beast::tcp_stream;

    tls_stream(const executor_type& ex, boost::asio::ssl::context& ctx);
    tls_stream(boost::asio::ip::tcp::socket socket, boost::asio::ssl::context& ctx);
    tls_stream(tls_stream&&) noexcept;
    tls_stream& operator=(tls_stream&&) noexcept;
    ~tls_stream();

    executor_type get_executor() const;
    boost::beast::tcp_stream& next_layer();
    SSL* native_handle();
    // Client side: the relay's certificate must name host (a DNS name or an IP literal).
    void verify_host(const std::string& host);
    // For a connection kept idle after its handshake: reads what has arrived without waiting
    // (TLS 1.3 session tickets) and says whether the peer may still take a request: true unless
    // it closed, failed or sent data nobody asked for. No operation may be pending.
    bool idle_and_open();
    // Records (or part of one) have been read from the socket and wait to be decrypted.
    bool has_buffered_input() const;

    // Every operation after the call fails with beast::error::timeout (and the connection is
    // closed) once the time is up, as beast::tcp_stream's.
    void expires_after(std::chrono::steady_clock::duration d);
    void expires_never();

    // Moves the connection to another executor (the relay runs both connections of a paired
    // stream on one thread). No operation may be pending.
    void rebind(const executor_type& ex);

    template <class Token>
    auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Token&& token)
    {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [impl = impl_](auto handler, bool client) { start_handshake(impl, client, std::move(handler)); }, token,
            type == boost::asio::ssl::stream_base::client);
    }

    template <class MutableBufferSequence, class Token>
    auto async_read_some(const MutableBufferSequence& buffers, Token&& token)
    {
        boost::asio::mutable_buffer first;
        for (auto it = boost::asio::buffer_sequence_begin(buffers); it != boost::asio::buffer_sequence_end(buffers); ++it)
            if (boost::asio::mutable_buffer b(*it); b.size() > 0) {
                first = b;
                break;
            }
        return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [impl = impl_](auto handler, boost::asio::mutable_buffer b) { start_read(impl, b, std::move(handler)); },
            token, first);
    }

    // Encrypts as much of the buffers as one call takes (a whole WebSocket message: its header
    // shares the first record with the payload) and completes when it has left for the kernel.
    template <class ConstBufferSequence, class Token>
    auto async_write_some(const ConstBufferSequence& buffers, Token&& token)
    {
        write_buffers parts;
        for (auto it = boost::asio::buffer_sequence_begin(buffers);
             it != boost::asio::buffer_sequence_end(buffers) && parts.count < parts.buffers.size(); ++it)
            if (boost::asio::const_buffer b(*it); b.size() > 0)
                parts.buffers[parts.count++] = b;
        return boost::asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [impl = impl_](auto handler, const write_buffers& w) { start_write(impl, w, std::move(handler)); }, token,
            parts);
    }

    // Sends close_notify and waits for the peer's.
    template <class Token>
    auto async_shutdown(Token&& token)
    {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [impl = impl_](auto handler) { start_shutdown(impl, shutdown_mode::await_peer, std::move(handler)); }, token);
    }

    // Sends close_notify and completes once it left: the end of this direction only (the relay
    // forwarding a connection to another node passes each side's close_notify on as it comes).
    template <class Token>
    auto async_send_close_notify(Token&& token)
    {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [impl = impl_](auto handler) { start_shutdown(impl, shutdown_mode::send_only, std::move(handler)); }, token);
    }

    // The WebSocket teardown: close_notify both ways, then the TCP connection is closed.
    template <class Token>
    auto async_teardown(Token&& token)
    {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [impl = impl_](auto handler) { start_shutdown(impl, shutdown_mode::then_close, std::move(handler)); }, token);
    }

    struct impl;

private:
    enum class shutdown_mode { await_peer, then_close, send_only };
    struct write_buffers {
        std::array<boost::asio::const_buffer, 32> buffers; // an HTTP message's fields and body in one record
        std::size_t count = 0;
    };
    using io_handler = boost::asio::any_completion_handler<void(boost::system::error_code, std::size_t)>;
    using done_handler = boost::asio::any_completion_handler<void(boost::system::error_code)>;
    static void start_handshake(const std::shared_ptr<impl>& s, bool client, done_handler handler);
    static void start_read(const std::shared_ptr<impl>& s, boost::asio::mutable_buffer buffer, io_handler handler);
    static void start_write(const std::shared_ptr<impl>& s, const write_buffers& buffers, io_handler handler);
    static void start_shutdown(const std::shared_ptr<impl>& s, shutdown_mode mode, done_handler handler);

    std::shared_ptr<impl> impl_;
};

// Beast's WebSocket stream finds these by argument-dependent lookup when it closes.
void teardown(boost::beast::role_type role, tls_stream& stream, boost::system::error_code& ec);

template <class TeardownHandler>
void async_teardown(boost::beast::role_type, tls_stream& stream, TeardownHandler&& handler)
{
    stream.async_teardown(std::forward<TeardownHandler>(handler));
}

} // namespace sg
