#include "common/tls_stream.hpp"

#include "common/block_pool.hpp"

#include <cerrno>
#include <cstring>
#include <optional>
#include <sys/socket.h>
#include <boost/asio/append.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/error.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace sg {

namespace asio = boost::asio;
namespace beast = boost::beast;
using boost::system::error_code;
using tcp = asio::ip::tcp;

namespace {

// A TLS record carries at most 16 KiB of plaintext.
constexpr std::size_t record_plaintext = 16 * 1024;
// One call encrypts at most this much (a 64 KiB WebSocket message and its header).
constexpr std::size_t max_write_per_call = 256 * 1024;
// OpenSSL's read buffer while data arrives: a whole 64 KiB message's records in one recv.
constexpr std::size_t read_buffer_bytes = 80 * 1024;

// Output buffers: one block per message in flight, reused per thread.
using block_cache = block_pool<128 * 1024, 2>;

// Encrypted bytes on their way to the kernel: held only until sent.
class output_buffer {
public:
    ~output_buffer() { release(); }
    void append(const char* p, std::size_t n)
    {
        if (end_ + n > capacity_)
            grow(end_ + n - begin_);
        std::memcpy(data_.get() + end_, p, n);
        end_ += n;
    }
    const char* data() const { return data_.get() + begin_; }
    std::size_t size() const { return end_ - begin_; }
    void consume(std::size_t n)
    {
        begin_ += n;
        if (begin_ == end_)
            release();
    }

private:
    void release()
    {
        block_cache::give(std::move(data_), capacity_);
        capacity_ = begin_ = end_ = 0;
    }
    void grow(std::size_t needed)
    {
        std::size_t capacity = std::max<std::size_t>(needed, block_cache::block_size);
        auto bigger = block_cache::take(capacity);
        if (size())
            std::memcpy(bigger.get(), data(), size());
        std::size_t kept = size();
        release();
        data_ = std::move(bigger);
        capacity_ = capacity;
        end_ = kept;
    }
    std::unique_ptr<char[]> data_;
    std::size_t capacity_ = 0, begin_ = 0, end_ = 0;
};

} // namespace

struct tls_stream::impl {
    impl(beast::tcp_stream t, asio::ssl::context& ctx);
    ~impl() { SSL_free(ssl); }
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;

    tcp::socket& socket() { return transport->socket(); }
    int fd() { return socket().is_open() ? socket().native_handle() : -1; }

    std::optional<beast::tcp_stream> transport; // optional: re-made on another executor by rebind
    SSL* ssl = nullptr;
    output_buffer out;
    int last_errno = 0;           // of the BIO's last failed system call
    bool eof = false;             // the peer ended the TCP stream
    bool background_flush = false; // output left by a read (an alert, a key update) is being sent
    std::optional<asio::steady_timer> deadline;
    bool deadline_armed = false;
    bool timed_out = false;
};

namespace {

// --- The BIO: reads straight from the socket, writes into impl::out -------------------------

int bio_read(BIO* bio, char* buf, size_t len, size_t* got)
{
    auto* s = static_cast<tls_stream::impl*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    int fd = s->fd();
    if (fd < 0) {
        s->last_errno = EBADF;
        return 0;
    }
    for (;;) {
        ssize_t n = ::recv(fd, buf, len, MSG_DONTWAIT);
        if (n > 0) {
            *got = static_cast<size_t>(n);
            return 1;
        }
        if (n == 0) { // end of stream: OpenSSL tells a missing close_notify from a clean end
            s->last_errno = 0;
            s->eof = true;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(bio);
        s->last_errno = errno;
        return 0;
    }
}

int bio_write(BIO* bio, const char* buf, size_t len, size_t* written)
{
    auto* s = static_cast<tls_stream::impl*>(BIO_get_data(bio));
    s->out.append(buf, len);
    *written = len;
    return 1;
}

long bio_ctrl(BIO* bio, int cmd, long, void*)
{
    auto* s = static_cast<tls_stream::impl*>(BIO_get_data(bio));
    switch (cmd) {
    case BIO_CTRL_FLUSH: // sent by the operation that called OpenSSL, once it returns
        return 1;
    case BIO_CTRL_WPENDING:
        return s ? static_cast<long>(s->out.size()) : 0;
    case BIO_CTRL_EOF:
        return s && s->eof ? 1 : 0;
    default:
        return 0;
    }
}

int bio_create(BIO* bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

BIO_METHOD* bio_method()
{
    static BIO_METHOD* method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "streamgate socket");
        BIO_meth_set_read_ex(m, bio_read);
        BIO_meth_set_write_ex(m, bio_write);
        BIO_meth_set_ctrl(m, bio_ctrl);
        BIO_meth_set_create(m, bio_create);
        return m;
    }();
    return method;
}

// --- Errors, in the codes Asio's ssl::stream gave (is_benign and the logs rely on them) -------

// SSL_get_error needs an empty error queue before the call it judges. Clearing it outright
// walks all sixteen slots every time (0.6 % of the bulk profile for the read and write of each
// message); the queue is nearly always empty already.
void clear_stale_errors()
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

error_code ssl_failure(tls_stream::impl& s, int result)
{
    int reason = SSL_get_error(s.ssl, result);
    unsigned long queued = ERR_get_error();
    ERR_clear_error();
    if (reason == SSL_ERROR_ZERO_RETURN)
        return asio::error::eof;
    if (queued) {
        if (ERR_GET_REASON(queued) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return asio::ssl::error::stream_truncated;
        return error_code(static_cast<int>(queued), asio::error::get_ssl_category());
    }
    if (s.timed_out)
        return beast::error::timeout;
    if (s.last_errno)
        return error_code(s.last_errno, boost::system::system_category());
    return asio::ssl::error::stream_truncated;
}

error_code wait_failure(tls_stream::impl& s, const error_code& ec)
{
    return s.timed_out ? error_code(beast::error::timeout) : ec;
}

// Sends what the kernel takes now; an error only for a real failure.
error_code send_some(tls_stream::impl& s)
{
    while (s.out.size()) {
        int fd = s.fd();
        if (fd < 0)
            return wait_failure(s, asio::error::bad_descriptor);
        ssize_t n = ::send(fd, s.out.data(), s.out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            s.out.consume(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return {};
        return error_code(n < 0 ? errno : EPIPE, boost::system::system_category());
    }
    return {};
}

// Runs next(error_code) on the handler's executor, with its cancellation slot, once the socket
// is ready for `what`.
template <class Handler, class Next>
void when_ready(tls_stream::impl& s, tcp::socket::wait_type what, Handler& handler, Next next)
{
    auto ex = asio::get_associated_executor(handler, s.socket().get_executor());
    auto slot = asio::get_associated_cancellation_slot(handler);
    s.socket().async_wait(what, asio::bind_cancellation_slot(slot, asio::bind_executor(ex, std::move(next))));
}

template <class Handler, class... Args>
void complete_later(tls_stream::impl& s, Handler handler, Args... args)
{
    asio::post(s.socket().get_executor(), asio::append(std::move(handler), args...));
}

// How deep completions may nest inside the calls that started them (per thread): deep enough to
// skip most trips through the io_context's queue, shallow enough to bound the stack and let
// other connections' handlers run.
constexpr int max_inline_completions = 4;
thread_local int inline_completions = 0;

// Completes an operation: directly when it went through the reactor (its continuation runs on the
// handler's executor already). An operation that finished at once (the data had arrived, the
// kernel took the message) completes inside its initiating call when the caller runs on the
// handler's executor and the nesting budget allows, else it is posted. Every post costs a trip
// through the scheduler's queue, and with it an extra epoll_wait: about three per 64 KiB message
// in each process when each completion was posted.
template <class Handler, class... Args>
void complete(tls_stream::impl& s, Handler handler, bool waited, Args... args)
{
    if (waited)
        return std::move(handler)(args...);
    if (inline_completions >= max_inline_completions)
        return complete_later(s, std::move(handler), args...);
    ++inline_completions;
    auto ex = asio::get_associated_executor(handler, s.socket().get_executor());
    asio::dispatch(ex, asio::append(std::move(handler), args...)); // inline only on that executor
    --inline_completions;
}

// Continues a flush once the socket is writable again.
template <class Handler, class Then>
struct flusher {
    std::shared_ptr<tls_stream::impl> s;
    Handler* handler; // lives in the operation that `then` owns
    Then then;

    void operator()(error_code ec)
    {
        if (ec)
            return then(wait_failure(*s, ec), true);
        if (auto failed = send_some(*s); failed || s->out.size() == 0)
            return then(failed, true);
        auto stream = s;
        auto& h = *handler;
        when_ready(*stream, tcp::socket::wait_write, h, std::move(*this));
    }
};

// Sends all of out, then calls then(error_code, waited): waited says whether it went through
// the reactor (then the caller may complete its handler directly).
template <class Handler, class Then>
void flush(const std::shared_ptr<tls_stream::impl>& s, Handler& handler, Then then)
{
    if (auto ec = send_some(*s); ec || s->out.size() == 0)
        return then(ec, false);
    when_ready(*s, tcp::socket::wait_write, handler, flusher<Handler, Then>{s, &handler, std::move(then)});
}

// Output a read produced (an alert, a key update) leaves on its own.
void flush_in_background(const std::shared_ptr<tls_stream::impl>& s)
{
    if (s->background_flush || s->out.size() == 0 || send_some(*s) || s->out.size() == 0)
        return;
    s->background_flush = true;
    s->socket().async_wait(tcp::socket::wait_write, [s](error_code ec) {
        s->background_flush = false;
        if (!ec)
            flush_in_background(s);
    });
}

} // namespace

tls_stream::impl::impl(beast::tcp_stream t, asio::ssl::context& ctx) : transport(std::move(t))
{
    ssl = SSL_new(ctx.native_handle());
    if (!ssl)
        throw std::runtime_error("cannot create a TLS connection (out of memory)");
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_set_read_ahead(ssl, 1);
    SSL_set_default_read_buffer_len(ssl, read_buffer_bytes);
    BIO* bio = BIO_new(bio_method());
    if (!bio) {
        SSL_free(ssl);
        throw std::runtime_error("cannot create a TLS connection (out of memory)");
    }
    BIO_set_data(bio, this);
    SSL_set_bio(ssl, bio, bio);
}

tls_stream::tls_stream(const executor_type& ex, asio::ssl::context& ctx)
    : impl_(std::make_shared<impl>(beast::tcp_stream(ex), ctx))
{
}

tls_stream::tls_stream(tcp::socket socket, asio::ssl::context& ctx)
    : impl_(std::make_shared<impl>(beast::tcp_stream(std::move(socket)), ctx))
{
}

tls_stream::tls_stream(tls_stream&&) noexcept = default;
tls_stream& tls_stream::operator=(tls_stream&&) noexcept = default;
tls_stream::~tls_stream() = default;

tls_stream::executor_type tls_stream::get_executor() const { return impl_->transport->get_executor(); }
beast::tcp_stream& tls_stream::next_layer() { return *impl_->transport; }
SSL* tls_stream::native_handle() { return impl_->ssl; }

void tls_stream::verify_host(const std::string& host)
{
    X509_VERIFY_PARAM* param = SSL_get0_param(impl_->ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    error_code ec;
    asio::ip::make_address(host, ec);
    if (!ec)
        X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
    else
        X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
}

bool tls_stream::idle_and_open()
{
    auto& s = *impl_;
    if (s.fd() < 0)
        return false;
    char byte;
    std::size_t n = 0;
    ERR_clear_error();
    int rc = SSL_read_ex(s.ssl, &byte, 1, &n);
    bool open = rc != 1 && SSL_get_error(s.ssl, rc) == SSL_ERROR_WANT_READ;
    ERR_clear_error();
    return open;
}

bool tls_stream::has_buffered_input() const { return SSL_has_pending(impl_->ssl) == 1; }

void tls_stream::expires_after(std::chrono::steady_clock::duration d)
{
    if (!impl_->deadline)
        impl_->deadline.emplace(impl_->socket().get_executor());
    impl_->deadline->expires_after(d);
    impl_->deadline_armed = true;
    impl_->deadline->async_wait([weak = std::weak_ptr<impl>(impl_)](error_code ec) {
        auto s = weak.lock();
        if (ec || !s)
            return;
        s->deadline_armed = false;
        s->timed_out = true;
        error_code ignored;
        s->socket().close(ignored);
    });
}

void tls_stream::expires_never()
{
    impl_->deadline_armed = false;
    if (impl_->deadline)
        impl_->deadline->cancel();
}

void tls_stream::rebind(const executor_type& ex)
{
    auto& s = *impl_;
    if (ex == s.transport->get_executor())
        return;
    std::optional<std::chrono::steady_clock::time_point> expiry;
    if (s.deadline && s.deadline_armed) {
        expiry = s.deadline->expiry();
        s.deadline->cancel();
    }
    s.deadline.reset();
    tcp::socket old = s.transport->release_socket();
    error_code ec;
    auto protocol = old.local_endpoint(ec).protocol();
    tcp::socket moved(ex);
    if (!ec) {
        auto fd = old.release(ec);
        if (!ec)
            moved.assign(protocol, fd, ec);
    }
    s.transport.emplace(std::move(moved)); // closed when the move failed: operations then fail cleanly
    if (expiry && *expiry > std::chrono::steady_clock::now())
        expires_after(*expiry - std::chrono::steady_clock::now());
}

// --- Handshake ----------------------------------------------------------------------------

namespace {

struct handshake_op {
    std::shared_ptr<tls_stream::impl> s;
    asio::any_completion_handler<void(error_code)> handler;

    static void step(std::unique_ptr<handshake_op> op, bool waited)
    {
        auto stream = op->s;
        if (stream->fd() < 0)
            return finish(std::move(op), wait_failure(*stream, asio::error::bad_descriptor), waited);
        ERR_clear_error();
        int rc = SSL_do_handshake(stream->ssl);
        bool want_read = rc != 1 && SSL_get_error(stream->ssl, rc) == SSL_ERROR_WANT_READ;
        error_code failed = rc == 1 || want_read ? error_code{} : ssl_failure(*stream, rc);
        // The flight OpenSSL wrote (or its alert) goes out before waiting for the peer's answer.
        auto& h = op->handler;
        flush(stream, h, [op = std::move(op), want_read, failed, waited](error_code ec, bool flush_waited) mutable {
            bool through_reactor = waited || flush_waited;
            if (!want_read || ec)
                return finish(std::move(op), failed ? failed : ec, through_reactor);
            auto stream = op->s;
            auto& h = op->handler;
            when_ready(*stream, tcp::socket::wait_read, h, [op = std::move(op)](error_code wec) mutable {
                if (wec) {
                    auto e = wait_failure(*op->s, wec);
                    return finish(std::move(op), e, true);
                }
                step(std::move(op), true);
            });
        });
    }

    static void finish(std::unique_ptr<handshake_op> op, error_code ec, bool waited)
    {
        complete(*op->s, std::move(op->handler), waited, ec);
    }
};

} // namespace

void tls_stream::start_handshake(const std::shared_ptr<impl>& s, bool client, done_handler handler)
{
    if (client)
        SSL_set_connect_state(s->ssl);
    else
        SSL_set_accept_state(s->ssl);
    handshake_op::step(std::unique_ptr<handshake_op>(new handshake_op{s, std::move(handler)}), false);
}

// --- Read ---------------------------------------------------------------------------------

namespace {

struct read_op {
    std::shared_ptr<tls_stream::impl> s;
    asio::mutable_buffer buffer;
    asio::any_completion_handler<void(error_code, std::size_t)> handler;

    static void step(std::unique_ptr<read_op> op, bool waited)
    {
        auto stream = op->s;
        auto& s = *stream;
        auto* data = static_cast<char*>(op->buffer.data());
        std::size_t got = 0;
        error_code failed;
        bool want_read = false;
        while (got < op->buffer.size()) {
            if (s.fd() < 0) {
                failed = wait_failure(s, asio::error::bad_descriptor);
                break;
            }
            std::size_t n = 0;
            clear_stale_errors();
            int rc = SSL_read_ex(s.ssl, data + got, op->buffer.size() - got, &n);
            if (rc == 1) {
                got += n;
                if (!SSL_has_pending(s.ssl))
                    break; // what has arrived is delivered; more would cost a system call
                continue;
            }
            want_read = SSL_get_error(s.ssl, rc) == SSL_ERROR_WANT_READ;
            if (!want_read)
                failed = ssl_failure(s, rc);
            break;
        }
        flush_in_background(stream);
        // Data first: an error after it comes again with the next read.
        if (got > 0 || failed)
            return finish(std::move(op), got > 0 ? error_code{} : failed, got, waited);
        auto& h = op->handler;
        when_ready(s, tcp::socket::wait_read, h, [op = std::move(op)](error_code ec) mutable {
            if (ec) {
                auto e = wait_failure(*op->s, ec);
                return finish(std::move(op), e, 0, true);
            }
            step(std::move(op), true);
        });
    }

    static void finish(std::unique_ptr<read_op> op, error_code ec, std::size_t n, bool waited)
    {
        complete(*op->s, std::move(op->handler), waited, ec, n);
    }
};

} // namespace

void tls_stream::start_read(const std::shared_ptr<impl>& s, asio::mutable_buffer buffer, io_handler handler)
{
    if (buffer.size() == 0)
        return complete_later(*s, std::move(handler), error_code{}, std::size_t{0});
    read_op::step(std::unique_ptr<read_op>(new read_op{s, buffer, std::move(handler)}), false);
}

// --- Write --------------------------------------------------------------------------------

namespace {

// Encrypts the buffers into s.out; returns the plaintext bytes taken.
std::size_t encrypt(tls_stream::impl& s, const asio::const_buffer* parts, std::size_t count, error_code& ec)
{
    std::size_t taken = 0, part = 0, offset = 0;
    auto write = [&](const void* p, std::size_t n) {
        std::size_t written = 0;
        clear_stale_errors();
        int rc = SSL_write_ex(s.ssl, p, n, &written);
        if (rc != 1) {
            ec = ssl_failure(s, rc);
            return false;
        }
        taken += written;
        return true;
    };
    // A small first buffer (a frame header) shares the first record with what follows.
    if (count > 1 && parts[0].size() < record_plaintext) {
        thread_local std::array<char, record_plaintext> first_record;
        std::size_t n = 0;
        while (part < count && n < first_record.size()) {
            std::size_t take = std::min(parts[part].size() - offset, first_record.size() - n);
            std::memcpy(first_record.data() + n, static_cast<const char*>(parts[part].data()) + offset, take);
            n += take;
            offset += take;
            if (offset == parts[part].size()) {
                ++part;
                offset = 0;
            }
        }
        if (!write(first_record.data(), n))
            return taken;
    }
    for (; part < count && taken < max_write_per_call; ++part, offset = 0) {
        std::size_t n = std::min(parts[part].size() - offset, max_write_per_call - taken);
        if (!write(static_cast<const char*>(parts[part].data()) + offset, n))
            return taken;
    }
    return taken;
}

struct write_op {
    std::shared_ptr<tls_stream::impl> s;
    std::size_t taken;
    asio::any_completion_handler<void(error_code, std::size_t)> handler;
};

} // namespace

void tls_stream::start_write(const std::shared_ptr<impl>& s, const write_buffers& buffers, io_handler handler)
{
    if (s->fd() < 0)
        return complete_later(*s, std::move(handler), wait_failure(*s, asio::error::bad_descriptor), std::size_t{0});
    if (buffers.count == 0)
        return complete_later(*s, std::move(handler), error_code{}, std::size_t{0});
    error_code ec;
    std::size_t taken = encrypt(*s, buffers.buffers.data(), buffers.count, ec);
    if (ec && taken == 0)
        return complete_later(*s, std::move(handler), ec, std::size_t{0});
    auto op = std::unique_ptr<write_op>(new write_op{s, taken, std::move(handler)});
    auto& h = op->handler;
    flush(s, h, [op = std::move(op)](error_code fec, bool waited) mutable {
        std::size_t n = fec ? 0 : op->taken;
        complete(*op->s, std::move(op->handler), waited, fec, n);
    });
}

// --- Shutdown -----------------------------------------------------------------------------

namespace {

struct shutdown_op {
    std::shared_ptr<tls_stream::impl> s;
    bool close_after;
    asio::any_completion_handler<void(error_code)> handler;

    // After our close_notify went out: reads (and drops) until the peer's arrives.
    static void await_peer(std::unique_ptr<shutdown_op> op, bool waited)
    {
        auto stream = op->s;
        auto& s = *stream;
        for (;;) {
            if (s.fd() < 0)
                return finish(std::move(op), wait_failure(s, asio::error::bad_descriptor), waited);
            std::array<char, 2048> discard;
            std::size_t n = 0;
            ERR_clear_error();
            int rc = SSL_read_ex(s.ssl, discard.data(), discard.size(), &n);
            if (rc == 1)
                continue;
            if (SSL_get_error(s.ssl, rc) != SSL_ERROR_WANT_READ) {
                error_code ec = ssl_failure(s, rc);
                return finish(std::move(op), ec == asio::error::eof ? error_code{} : ec, waited);
            }
            break;
        }
        auto& h = op->handler;
        when_ready(s, tcp::socket::wait_read, h, [op = std::move(op)](error_code ec) mutable {
            if (ec) {
                auto e = wait_failure(*op->s, ec);
                return finish(std::move(op), e, true);
            }
            await_peer(std::move(op), true);
        });
    }

    static void finish(std::unique_ptr<shutdown_op> op, error_code ec, bool waited)
    {
        if (op->close_after) {
            error_code ignored;
            op->s->socket().shutdown(tcp::socket::shutdown_both, ignored);
            op->s->socket().close(ignored);
        }
        complete(*op->s, std::move(op->handler), waited, ec);
    }
};

} // namespace

void tls_stream::start_shutdown(const std::shared_ptr<impl>& s, shutdown_mode mode, done_handler handler)
{
    auto op = std::unique_ptr<shutdown_op>(new shutdown_op{s, mode == shutdown_mode::then_close, std::move(handler)});
    if (s->fd() < 0)
        return shutdown_op::finish(std::move(op), wait_failure(*s, asio::error::bad_descriptor), false);
    ERR_clear_error();
    int rc = SSL_shutdown(s->ssl); // 1: the peer's close_notify came already; 0: ours is queued
    error_code failed = rc < 0 ? ssl_failure(*s, rc) : error_code{};
    auto& h = op->handler;
    bool send_only = mode == shutdown_mode::send_only;
    flush(s, h, [op = std::move(op), rc, failed, send_only](error_code ec, bool waited) mutable {
        if (rc != 0 || ec || send_only)
            return shutdown_op::finish(std::move(op), ec ? ec : failed, waited);
        shutdown_op::await_peer(std::move(op), waited);
    });
}

void teardown(beast::role_type, tls_stream& stream, error_code& ec)
{
    // Only the asynchronous close is used; a synchronous one just ends the connection.
    ec = {};
    auto& socket = stream.next_layer().socket();
    error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
}

} // namespace sg
