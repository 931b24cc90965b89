// The device-streams MQTT endpoint: IoT Hub device code (the Azure IoT SDKs' MQTT transport)
// keeps its control connection here instead of on the control WebSocket. MQTT 3.1.1 over TLS on
// --mqtt-listen, or over a WebSocket at /$iothub/websocket on the main port. A stream request
// becomes a PUBLISH to $iothub/streams/POST/..., the device's PUBLISH to $iothub/streams/res/...
// becomes its answer; everything else (device map, stream creation, revocation) is control.cpp's.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/write.hpp>
#include <deque>
#include "common/device_id.hpp"
#include "common/iothub_mqtt.hpp"
#include "common/mqtt_codec.hpp"
#include "relay/internal.hpp"
#include "relay/x509_auth.hpp"

namespace sg::relay {

namespace {

using clock = std::chrono::steady_clock;
constexpr std::size_t queue_limit = 256;     // packets waiting to be written to one device
constexpr std::size_t held_limit = 64;       // stream requests waiting for the device's SUBSCRIBE
constexpr auto max_keep_alive = std::chrono::seconds(1767); // IoT Hub's largest; also used for 0
constexpr auto linger = std::chrono::seconds(2);            // for the peer to read our last packet

// What mqtt_channel needs from a session, whatever carries its bytes.
class mqtt_sink {
public:
    virtual ~mqtt_sink() = default;
    virtual void send_stream_request(std::string packet) = 0; // thread-safe
    virtual void close(std::string reason) = 0;              // thread-safe
};

class mqtt_channel final : public control_channel {
public:
    mqtt_channel(std::string device_id, std::string credential, std::weak_ptr<mqtt_sink> sink)
        : control_channel(std::move(device_id), std::move(credential), "mqtt"), sink_(std::move(sink))
    {
    }
    void close(int code, std::string_view message) override
    {
        if (auto s = sink_.lock())
            s->close(failure{code, std::string(message)}.describe());
    }
    bool answer(protocol::stream_response_message m) { return deliver(std::move(m)); }

private:
    void transmit(const protocol::stream_request_message& m) override
    {
        mqtt::publish_packet p;
        p.topic = mqtt::stream_request_topic(m.stream_name, m.request_id, mqtt::with_explicit_port(m.url),
                                             m.authorization_token);
        if (auto s = sink_.lock())
            s->send_stream_request(mqtt::encode_publish(p));
    }
    std::weak_ptr<mqtt_sink> sink_;
};

// MQTT straight on TLS (--mqtt-listen).
struct tls_transport {
    tls_stream stream;
    asio::any_io_executor get_executor() { return stream.get_executor(); }
    auto read_some(asio::mutable_buffer b) { return stream.async_read_some(b, use_nothrow); }
    auto write(asio::const_buffer b) { return asio::async_write(stream, b, use_nothrow); }
    SSL* ssl() { return stream.native_handle(); }
    // No close_notify: a TLS shutdown cannot run beside the pending read. The peer reads what
    // was sent, then EOF.
    asio::awaitable<void> finish()
    {
        error_code ignored;
        beast::get_lowest_layer(stream).socket().shutdown(tcp::socket::shutdown_send, ignored);
        co_return;
    }
    void abort()
    {
        error_code ignored;
        beast::get_lowest_layer(stream).socket().close(ignored);
    }
};

// MQTT in binary WebSocket messages (/$iothub/websocket); packets may span messages.
struct ws_transport {
    wss_stream ws;
    asio::any_io_executor get_executor() { return ws.get_executor(); }
    // MQTT over WebSockets is binary frames only (MQTT 3.1.1, 6.0): a text frame ends the session.
    asio::awaitable<std::tuple<error_code, std::size_t>> read_some(asio::mutable_buffer b)
    {
        auto result = co_await ws.async_read_some(b, use_nothrow);
        if (!std::get<0>(result) && ws.got_text())
            co_return std::tuple<error_code, std::size_t>{websocket::error::bad_data_frame, 0};
        co_return result;
    }
    auto write(asio::const_buffer b) { return ws.async_write(b, use_nothrow); }
    SSL* ssl() { return ws.next_layer().native_handle(); }
    asio::awaitable<void> finish() { co_await ws.async_close(websocket::close_code::normal, use_nothrow); }
    void abort()
    {
        error_code ignored;
        beast::get_lowest_layer(ws).socket().close(ignored);
    }
};

template <class Transport>
class mqtt_session final : public mqtt_sink, public std::enable_shared_from_this<mqtt_session<Transport>> {
public:
    mqtt_session(std::shared_ptr<relay_state> state, Transport transport, std::string peer, peer_certificate certificate)
        : state_(std::move(state)), t_(std::move(transport)), peer_(std::move(peer)), certificate_(std::move(certificate)),
          wakeup_(t_.get_executor()), watchdog_(t_.get_executor())
    {
        wakeup_.expires_at(asio::steady_timer::time_point::max());
        max_packet_ = std::max<std::size_t>(state_->options.max_control_message, 1024);
    }

    asio::awaitable<void> run()
    {
        using namespace asio::experimental::awaitable_operators;
        deadline_ = clock::now() + state_->options.handshake_timeout; // CONNECT comes within it
        co_await (read_loop() || write_loop() || watch());
        finished_ = true;
        queue_.clear();
        if (channel_)
            state_->device_offline(channel_, peer_, true, end_reason_.empty() ? "closed" : end_reason_);
        else if (!end_reason_.empty())
            state_->log->info("event=MqttClosed peer={} clientId={} reason=\"{}\"", peer_, client_id_, end_reason_);
    }

    void send_stream_request(std::string packet) override
    {
        asio::dispatch(t_.get_executor(), [self = this->shared_from_this(), packet = std::move(packet)]() mutable {
            if (self->subscribed_)
                self->enqueue(std::move(packet));
            else if (self->held_.size() < held_limit) // sent when the device subscribes
                self->held_.push_back(std::move(packet));
        });
    }

    void close(std::string reason) override
    {
        asio::dispatch(t_.get_executor(), [self = this->shared_from_this(), reason = std::move(reason)] {
            self->end(reason);
        });
    }

private:
    // On the session's strand from here on.
    void enqueue(std::string packet)
    {
        if (finished_ || closing_)
            return;
        if (queue_.size() >= queue_limit) {
            end_reason_ = "too slow to read its packets (queue full)";
            queue_.clear();
            t_.abort();
            return;
        }
        queue_.push_back(std::move(packet));
        wake();
    }

    // Stops reading; the queued packets go out, then the connection ends.
    void end(std::string reason)
    {
        if (finished_ || closing_)
            return;
        closing_ = true;
        if (end_reason_.empty())
            end_reason_ = std::move(reason);
        deadline_ = clock::now() + linger + std::chrono::seconds(3);
        watchdog_.cancel();
        wake();
    }

    void wake()
    {
        woken_ = true;
        wakeup_.cancel();
    }

    asio::awaitable<error_code> read_loop()
    {
        std::string in;
        std::array<char, 4096> chunk;
        for (;;) {
            auto [ec, n] = co_await t_.read_some(asio::buffer(chunk));
            if (ec) {
                if (ec == websocket::error::bad_data_frame)
                    refuse("a text WebSocket frame (MQTT travels in binary frames)");
                co_return ec;
            }
            if (closing_) // draining until the peer closes
                continue;
            in.append(chunk.data(), n);
            while (!closing_) {
                mqtt::fixed_header h;
                std::string error;
                auto status = mqtt::peek_packet(in, max_packet_, h, error);
                if (status == mqtt::frame_status::incomplete)
                    break;
                if (status != mqtt::frame_status::complete) {
                    refuse(error);
                    break;
                }
                handle(h, std::string_view(in).substr(h.header_size, h.remaining));
                in.erase(0, h.packet_size());
            }
            if (closing_)
                in.clear();
        }
    }

    asio::awaitable<error_code> write_loop()
    {
        for (;;) {
            while (!queue_.empty()) {
                std::string packet = std::move(queue_.front());
                queue_.pop_front();
                auto [ec, n] = co_await t_.write(asio::buffer(packet));
                if (ec)
                    co_return ec;
            }
            if (closing_) {
                co_await t_.finish();
                // The read loop sees the peer's EOF (or the watchdog ends it after the linger).
                wakeup_.expires_at(clock::now() + linger);
                co_await wakeup_.async_wait(use_nothrow);
                t_.abort();
                co_return error_code(asio::error::eof);
            }
            woken_ = false;
            auto [ec] = co_await wakeup_.async_wait(use_nothrow);
            if (!woken_) // cancelled: another loop ended
                co_return ec ? ec : error_code(asio::error::operation_aborted);
        }
    }

    // One deadline for the whole session: CONNECT within the handshake timeout, then a packet
    // within 1.5 times the keep-alive (MQTT-3.1.2-24).
    asio::awaitable<error_code> watch()
    {
        for (;;) {
            watchdog_.expires_at(deadline_);
            co_await watchdog_.async_wait(use_nothrow); // cancelled when the deadline moves
            auto cs = co_await asio::this_coro::cancellation_state;
            if (cs.cancelled() != asio::cancellation_type::none) // another loop ended the session
                co_return asio::error::operation_aborted;
            if (clock::now() >= deadline_) {
                if (!closing_)
                    end_reason_ = connected_ ? "keep-alive expired" : "no CONNECT in time";
                t_.abort();
                co_return error_code(asio::error::timed_out);
            }
        }
    }

    // A protocol violation: logged, the connection closed (3.1.1 has no error packet to send).
    void refuse(std::string_view why)
    {
        state_->log->warn("event=MqttProtocolError peer={} clientId={} reason=\"{}\"", peer_, client_id_, why);
        end(std::string(why));
    }

    void handle(const mqtt::fixed_header& h, std::string_view body)
    {
        if (connected_)
            deadline_ = clock::now() + keep_alive_limit_;
        if (!connected_ && h.type != mqtt::packet_type::connect)
            return refuse(std::string(mqtt::to_string(h.type)) + " before CONNECT");
        std::string error;
        switch (h.type) {
        case mqtt::packet_type::connect:
            if (connected_)
                return refuse("second CONNECT");
            return on_connect(h, body);
        case mqtt::packet_type::subscribe:
            if (auto s = mqtt::parse_subscribe(h, body, error))
                return on_subscribe(*s);
            return refuse(error);
        case mqtt::packet_type::unsubscribe:
            if (auto u = mqtt::parse_unsubscribe(h, body, error)) {
                for (const auto& t : u->topics)
                    if (t == mqtt::streams_request_filter)
                        subscribed_ = false;
                return enqueue(mqtt::encode_unsuback(u->packet_id));
            }
            return refuse(error);
        case mqtt::packet_type::publish:
            if (auto p = mqtt::parse_publish(h, body, error))
                return on_publish(*p);
            return refuse(error);
        case mqtt::packet_type::pingreq:
            return h.remaining == 0 ? enqueue(mqtt::encode_pingresp()) : refuse("PINGREQ with a body");
        case mqtt::packet_type::disconnect:
            return end("the device sent DISCONNECT");
        default:
            return refuse(std::string("unexpected ") + mqtt::to_string(h.type));
        }
    }

    // CONNACK with a refusal, then close.
    void refuse_connect(std::uint8_t code, std::string_view why, const char* event = "MqttConnectRefused")
    {
        state_->log->warn("event={} peer={} device={} endpoint=mqtt connack={} reason=\"{}\"", event, peer_, client_id_,
                          code, why);
        enqueue(mqtt::encode_connack(false, code));
        end("CONNECT refused: " + std::string(why));
    }

    void on_connect(const mqtt::fixed_header& h, std::string_view body)
    {
        std::string error;
        auto c = mqtt::parse_connect(h, body, error);
        if (!c)
            return refuse(error);
        client_id_ = c->client_id.substr(0, 128);
        if (c->protocol_name != "MQTT" || c->protocol_level != 4)
            return refuse_connect(mqtt::connack::bad_protocol_version, "only MQTT 3.1.1 is spoken here");
        if (!is_valid_device_id(c->client_id))
            return refuse_connect(mqtt::connack::identifier_rejected, "client identifier is not a valid device id");
        if (!c->username)
            return refuse_connect(mqtt::connack::bad_user_name_or_password, "no user name ({HostName}/{deviceId}/?api-version=...)");
        auto user = mqtt::parse_user_name(*c->username, error);
        if (!user)
            return refuse_connect(mqtt::connack::bad_user_name_or_password, error);
        if (!user->module_id.empty())
            return refuse_connect(mqtt::connack::identifier_rejected, "modules are not supported");
        if (user->device_id != c->client_id)
            return refuse_connect(mqtt::connack::identifier_rejected, "the user name names another device than the client identifier");

        device_identity device;
        std::string credential;
        const std::string authorization = c->password.value_or("");
        failure f;
        try {
            f = state_->auth->authorize_device(authorization, c->client_id, &device, &certificate_, &credential);
        } catch (const registry_unavailable& e) {
            // As on the control WebSocket (503002): the device backs off and tries again.
            state_->log->warn("event=RegistryUnavailable peer={} device={} endpoint=mqtt reason=\"{}\"", peer_,
                              c->client_id, e.what());
            return refuse_connect(mqtt::connack::server_unavailable, std::string(registry_unavailable_message));
        }
        if (f) {
            state_->metrics.auth_failed(auth_endpoint::control, f);
            return refuse_connect(mqtt::connack::not_authorized, f.describe(), "AuthFailed");
        }
        if (state_->stopping)
            return refuse_connect(mqtt::connack::server_unavailable, "relay is shutting down");
        if (auto f = state_->admit_device(c->client_id, peer_))
            return refuse_connect(mqtt::connack::server_unavailable, f.describe());

        connected_ = true;
        auto keep_alive = std::chrono::seconds(c->keep_alive);
        if (keep_alive.count() == 0 || keep_alive > max_keep_alive)
            keep_alive = max_keep_alive;
        keep_alive_limit_ = std::chrono::duration_cast<std::chrono::milliseconds>(keep_alive) * 3 / 2;
        deadline_ = clock::now() + keep_alive_limit_;
        watchdog_.cancel();

        channel_ = std::make_shared<mqtt_channel>(c->client_id, credential,
                                                  std::weak_ptr<mqtt_sink>(this->shared_from_this()));
        auto replaced = state_->attach_device(channel_);
        enqueue(mqtt::encode_connack(false, mqtt::connack::accepted));
        state_->device_online(channel_, std::move(replaced), peer_);
    }

    void on_subscribe(const mqtt::subscribe_packet& s)
    {
        std::vector<std::uint8_t> granted;
        for (const auto& f : s.filters) {
            if (f.topic == mqtt::streams_request_filter) {
                subscribed_ = true;
                granted.push_back(0);
            } else if (f.topic == mqtt::streams_response_filter) {
                granted.push_back(0);
            } else {
                // Twin, methods, cloud-to-device messages: this relay has none to deliver.
                state_->log->info("event=MqttSubscribeRefused device={} topic=\"{}\"", client_id_, f.topic.substr(0, 128));
                granted.push_back(mqtt::suback_failure);
            }
        }
        enqueue(mqtt::encode_suback(s.packet_id, granted));
        if (subscribed_) {
            for (auto& p : held_)
                enqueue(std::move(p));
            held_.clear();
        }
    }

    void on_publish(const mqtt::publish_packet& p)
    {
        if (p.qos > 1)
            return refuse("QoS 2 is not supported");
        if (p.topic.starts_with("$iothub/streams/res/")) {
            std::string error;
            auto r = mqtt::parse_stream_response_topic(p.topic, error);
            if (!r)
                return refuse("invalid stream response: " + error);
            protocol::stream_response_message m;
            m.request_id = r->rid;
            m.accepted = r->status == 200;
            if (!m.accepted)
                m.reason = !p.payload.empty() && p.payload.size() <= 256 && mqtt::valid_mqtt_string(p.payload)
                               ? p.payload
                               : "the device rejected the stream (status " + std::to_string(r->status) + ")";
            if (!channel_->answer(std::move(m)))
                state_->log->info("device={} answered unknown or expired request", client_id_);
        } else if (!ignored_publish_logged_) {
            // Telemetry, twin or method traffic: not this relay's business. Dropped (acknowledged at
            // QoS 1 so the device does not resend it forever); logged once per connection.
            ignored_publish_logged_ = true;
            state_->log->info("event=MqttPublishIgnored device={} topic=\"{}\"", client_id_, p.topic.substr(0, 128));
        }
        if (p.qos == 1)
            enqueue(mqtt::encode_puback(p.packet_id));
    }

    std::shared_ptr<relay_state> state_;
    Transport t_;
    std::string peer_;
    peer_certificate certificate_;
    std::size_t max_packet_ = 0;
    std::string client_id_;
    std::shared_ptr<mqtt_channel> channel_;
    std::deque<std::string> queue_;
    std::vector<std::string> held_;
    asio::steady_timer wakeup_, watchdog_;
    clock::time_point deadline_;
    std::chrono::milliseconds keep_alive_limit_{0};
    std::string end_reason_;
    bool connected_ = false, subscribed_ = false, closing_ = false, finished_ = false, woken_ = false;
    bool ignored_publish_logged_ = false;
};

} // namespace

asio::awaitable<void> serve_mqtt(std::shared_ptr<relay_state> state, tcp::socket socket, std::string peer)
{
    error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    tls_stream stream(std::move(socket), *state->tls);
    stream.expires_after(state->options.handshake_timeout);
    auto [hec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_nothrow);
    if (hec) {
        state->log->info("event=HandshakeFailed peer={} endpoint=mqtt reason=\"{}\"", peer, hec.message());
        co_return;
    }
    stream.expires_never(); // the session's watchdog keeps the deadlines
    auto certificate = state->device_cas.inspect(stream.native_handle(), *state->reg);
    auto session = std::make_shared<mqtt_session<tls_transport>>(state, tls_transport{std::move(stream)}, peer,
                                                                 std::move(certificate));
    co_await session->run();
}

asio::awaitable<void> serve_mqtt_websocket(std::shared_ptr<relay_state> state, tls_stream stream, request_type req,
                                           std::string peer)
{
    auto certificate = state->device_cas.inspect(stream.native_handle(), *state->reg);
    ws_transport t{wss_stream(std::move(stream))};
    t.ws.binary(true);
    t.ws.read_message_max(state->options.max_control_message + 1024);
    t.ws.set_option(websocket::stream_base::timeout{state->options.handshake_timeout, websocket::stream_base::none(), false});
    bool mqtt_subprotocol = false;
    for (auto part : beast::http::token_list(req[http::field::sec_websocket_protocol]))
        mqtt_subprotocol = mqtt_subprotocol || beast::iequals(part, "mqtt");
    if (mqtt_subprotocol)
        t.ws.set_option(websocket::stream_base::decorator(
            [](websocket::response_type& res) { res.set(http::field::sec_websocket_protocol, "mqtt"); }));
    auto [aec] = co_await t.ws.async_accept(req, use_nothrow);
    if (aec) {
        state->log->info("peer={} endpoint=mqtt-websocket handshake failed: {}", peer, aec.message());
        co_return;
    }
    auto session = std::make_shared<mqtt_session<ws_transport>>(state, std::move(t), peer, std::move(certificate));
    co_await session->run();
}

} // namespace sg::relay
