// The streaming endpoint: each side of a stream joins with its own single-use token; when both
// are there, the byte pump carries binary messages between them until one side ends.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include "common/crypto.hpp"
#include "common/pump.hpp"
#include "relay/cluster.hpp"
#include "relay/internal.hpp"

namespace sg::relay {

namespace {

constexpr auto kept_connection_wait = std::chrono::seconds(5);

const char* side_name(stream_side s) { return s == stream_side::service ? "service" : "device"; }

// Finds the stream, checks the token against the side it belongs to and marks it used.
failure claim_side(relay_state& state, const route& r, std::string_view authorization,
                   std::shared_ptr<pending_stream>& stream, stream_side& side, const asio::any_io_executor& here,
                   asio::any_io_executor& home)
{
    constexpr std::string_view bearer = "Bearer ";
    if (authorization.substr(0, bearer.size()) != bearer)
        return failure{codes::unauthorized, "missing Bearer token"};
    auto token = authorization.substr(bearer.size());
    std::lock_guard lock(state.streams_mutex);
    auto it = state.streams.find(r.stream_id);
    // Unknown, expired, other device's or other hub's: all the same answer.
    if (it == state.streams.end() || it->second->device_id != r.device_id || r.hub != state.hub_name ||
        it->second->expires_at < std::chrono::steady_clock::now())
        return failure{codes::unauthorized, "no such stream, or it expired"};
    auto& s = *it->second;
    bool is_service = constant_time_equal(token, s.service_token);
    bool is_device = constant_time_equal(token, s.device_token);
    if (!is_service && !is_device)
        return failure{codes::unauthorized, "token is not valid for this stream"};
    bool& joined = is_service ? s.service_joined : s.device_joined;
    if (joined)
        return failure{codes::unauthorized, "token was already used"};
    joined = true;
    if (!s.home)
        s.home = here;
    home = s.home;
    side = is_service ? stream_side::service : stream_side::device;
    stream = it->second;
    return {};
}

// Cuts a stream that moved no byte either way for the idle timeout: the sockets are closed under
// the pump, which then ends both sides.
asio::awaitable<void> watch_idle(std::shared_ptr<pump_counters> counters, std::chrono::seconds timeout,
                                 std::shared_ptr<wss_stream> service, std::shared_ptr<wss_stream> device,
                                 std::shared_ptr<std::atomic<bool>> done, std::shared_ptr<std::atomic<bool>> fired)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    std::uint64_t last = ~0ull;
    auto quiet_since = std::chrono::steady_clock::now();
    while (!*done) {
        timer.expires_after(std::min<std::chrono::steady_clock::duration>(timeout, std::chrono::seconds(1)));
        co_await timer.async_wait(use_nothrow);
        std::uint64_t total = counters->a_to_b + counters->b_to_a;
        auto now = std::chrono::steady_clock::now();
        if (total != last) {
            last = total;
            quiet_since = now;
        } else if (now - quiet_since >= timeout && !*done) {
            *fired = true;
            for (auto& ws : {service, device})
                asio::post(ws->get_executor(), [ws] {
                    error_code ignored;
                    beast::get_lowest_layer(*ws).socket().close(ignored);
                });
            co_return;
        }
    }
}

// One side's connection to a stream.
struct joined_side {
    std::shared_ptr<wss_stream> ws;
    bool kept = false; // negotiated: kept for the proxy's next join after a clean end
    std::string peer;
    bool on_kept = false; // joined on a connection kept from an earlier stream
};

const char* join_name(const joined_side& j) { return j.on_kept ? "kept" : "new"; }

asio::awaitable<void> await_next_join(std::shared_ptr<relay_state> state, std::shared_ptr<wss_stream> ws,
                                      std::string peer);

// The sides are references to named objects of the awaiting frame: g++ 12 destroys a temporary
// argument of a co_await'ed call twice.
asio::awaitable<void> run_pair(std::shared_ptr<relay_state> state, std::shared_ptr<pending_stream> s,
                               const joined_side& service_side, const joined_side& device_side)
{
    auto& service = service_side.ws;
    auto& device = device_side.ws;
    auto started = std::chrono::steady_clock::now();
    auto setup_ms = std::chrono::duration<double, std::milli>(started - s->requested_at).count();
    state->active_streams++;
    // Two threads only when a kept connection of another lane joined (the proxy had none of this one).
    state->log->info("event=StreamEstablished device={} stream={} streamId={} setupMs={:.1f} serviceJoin={} "
                     "deviceJoin={} threads={}",
                     s->device_id, s->stream_name, s->stream_id, setup_ms, join_name(service_side),
                     join_name(device_side), service->get_executor() == device->get_executor() ? 1 : 2);
    auto counters = std::make_shared<pump_counters>();
    state->metrics.stream_started(s->stream_id, s->device_id, s->stream_name, started - s->requested_at, counters);
    auto done = std::make_shared<std::atomic<bool>>(false);
    auto idle = std::make_shared<std::atomic<bool>>(false);
    if (state->options.idle_stream_timeout.count() > 0)
        asio::co_spawn(co_await asio::this_coro::executor,
                       watch_idle(counters, state->options.idle_stream_timeout, service, device, done, idle), asio::detached);
    auto result = co_await pump(ws_end(service, service_side.kept), ws_end(device, device_side.kept), stream_chunk,
                                counters.get());
    *done = true;
    auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    state->metrics.stream_ended(s->stream_id);
    state->active_streams--;
    if (*idle)
        state->metrics.limit_hit("idle_stream_timeout");
    state->log->info("event=StreamClosed device={} stream={} streamId={} bytesToDevice={} bytesToService={} "
                     "durationS={:.3f} result={}",
                     s->device_id, s->stream_name, s->stream_id, result.bytes_a_to_b, result.bytes_b_to_a, seconds,
                     *idle ? "idle timeout" : result.error ? result.error.message() : "ok");
    // Both directions ended with their empty messages: nothing of this stream is left on either
    // connection, so each may carry its proxy's next stream.
    if (!result.error && !*idle)
        for (auto* side : {&service_side, &device_side})
            if (side->kept)
                asio::co_spawn(side->ws->get_executor(), await_next_join(state, side->ws, side->peer), asio::detached);
}

// The rest of a join, on the stream's home thread.
asio::awaitable<void> join_side(std::shared_ptr<relay_state> state, tls_stream stream, request_type req, route r,
                                std::string peer, std::shared_ptr<pending_stream> s, stream_side side);

} // namespace

asio::awaitable<void> serve_bridge(std::shared_ptr<relay_state> state, tls_stream stream, request_type req, route r,
                                   std::string peer)
{
    if (state->cluster) {
        std::string home_node = stream_home(r.stream_id);
        if (!home_node.empty() && home_node != state->cluster->node_id()) {
            co_await state->cluster->forward_join(std::move(stream), std::move(req), std::move(home_node), std::move(peer));
            co_return;
        }
    }
    std::shared_ptr<pending_stream> s;
    stream_side side{};
    auto here = co_await asio::this_coro::executor;
    asio::any_io_executor home;
    if (auto f = claim_side(*state, r, req[http::field::authorization], s, side, here, home)) {
        state->log->warn("event=AuthFailed peer={} device={} endpoint=bridge streamId={} code={} reason=\"{}\"", peer,
                         r.device_id, r.stream_id, f.code, f.message);
        state->metrics.auth_failed(auth_endpoint::bridge, f);
        auto res = error_response(req, f.code, f.message);
        res.keep_alive(false);
        co_await http::async_write(stream, res, use_nothrow);
        co_return;
    }
    if (home != here) {
        // The other side's connection lives on another thread: this one moves there, so the pump
        // reads and writes both without handing a byte between threads.
        // Detached, not awaited: a coroutine waiting on another io_context for its child made
        // the two contexts' teardown order matter (the child's end posted to a destroyed one).
        stream.rebind(home);
        asio::co_spawn(home, join_side(state, std::move(stream), std::move(req), std::move(r), std::move(peer), s, side),
                       asio::detached);
        co_return;
    }
    co_await join_side(state, std::move(stream), std::move(req), std::move(r), std::move(peer), s, side);
}

namespace {

// The side's connection waits for the other, or, second, runs the pump with both.
asio::awaitable<void> pair_side(std::shared_ptr<relay_state> state, const joined_side& me,
                                std::shared_ptr<pending_stream> s, stream_side side);

asio::awaitable<void> join_side(std::shared_ptr<relay_state> state, tls_stream stream, request_type req, route r,
                                std::string peer, std::shared_ptr<pending_stream> s, stream_side side)
{
    auto ws = std::make_shared<wss_stream>(std::move(stream));
    configure_stream_websocket(*ws, beast::role_type::server);
    auto here = co_await asio::this_coro::executor;
    const bool kept = state->keeps_stream_connections() && req[protocol::reuse_header] == "1";
    if (kept)
        ws->set_option(websocket::stream_base::decorator([lane = state->lane_of(here)](websocket::response_type& res) {
            res.set(protocol::reuse_header, std::to_string(lane));
        }));
    auto [aec] = co_await ws->async_accept(req, use_nothrow);
    if (aec) {
        state->log->info("peer={} streamId={} side={} handshake failed: {}", peer, r.stream_id, side_name(side), aec.message());
        co_return;
    }
    joined_side me{ws, kept, std::move(peer)};
    co_await pair_side(state, me, std::move(s), side);
}

// Closes a kept connection whose next join is refused, saying why (the proxy then knows not to
// try the token again on a new connection).
asio::awaitable<void> refuse_join(std::shared_ptr<wss_stream> ws, int code, std::string why)
{
    auto reason = websocket::close_reason(code / 1000 == 401 ? websocket::close_code::policy_error
                                                             : websocket::close_code::protocol_error,
                                          protocol::close_reason_text(code, why));
    co_await ws->async_close(reason, use_nothrow);
}

// Sends one text message on a kept connection (it carries binary messages otherwise).
asio::awaitable<error_code> send_text(wss_stream& ws, const std::string& text)
{
    ws.text(true);
    auto sent = co_await ws.async_write(asio::buffer(text), use_nothrow);
    ws.binary(true);
    co_return std::get<0>(sent);
}

// What a join or an open on a kept connection led to.
struct claimed_side {
    std::shared_ptr<pending_stream> stream;
    stream_side side{};
};

// An "open": the stream request as the POST would make it, on this connection. Accepted, the
// connection is the stream's service side; otherwise the answer goes back and it stays kept.
asio::awaitable<std::optional<claimed_side>> serve_open(std::shared_ptr<relay_state> state, std::shared_ptr<wss_stream> ws,
                                                        const protocol::open_message& m, const std::string& peer)
{
    request_type req{http::verb::post, "/twins/" + url_encode(m.device_id) + "/streams/" + url_encode(m.stream_name), 11};
    req.set(http::field::authorization, m.authorization);
    req.set("iothub-streaming-connect-timeout-in-seconds", std::to_string(m.connect_timeout));
    req.set("iothub-streaming-response-timeout-in-seconds", std::to_string(m.response_timeout));
    route r = match_route(req.target());
    http::response<http::string_body> res;
    if (r.kind == route_kind::create_stream)
        res = co_await open_stream(state, req, r, peer);
    else
        res = error_response(req, codes::bad_request, r.kind == route_kind::invalid ? r.reason : "malformed open");
    const bool accepted = res.result() == http::status::ok && res["iothub-streaming-is-accepted"] == "True";
    std::optional<claimed_side> claimed;
    std::string answer;
    if (accepted) {
        std::string url(res["iothub-streaming-url"]);
        auto path = url.find("/bridges/");
        route bridge = match_route(path == std::string::npos ? std::string_view{} : std::string_view(url).substr(path));
        claimed.emplace();
        asio::any_io_executor home;
        if (auto f = claim_side(*state, bridge, "Bearer " + std::string(res["iothub-streaming-auth-token"]),
                                claimed->stream, claimed->side, ws->get_executor(), home)) {
            claimed.reset(); // taken meanwhile only if the stream already expired
            answer = protocol::open_error_message(f);
        } else {
            answer = protocol::joined_message(claimed->stream->stream_id);
        }
    } else if (res.result() == http::status::ok) {
        answer = protocol::rejected_message(res["iothub-streaming-rejection-reason"]);
    } else {
        answer = protocol::open_error_message(protocol::parse_error_body(res.body(), res.result_int()));
    }
    auto ec = co_await send_text(*ws, answer);
    if (ec && claimed) {
        // Gone as its stream was accepted: the device's side is not kept waiting for it.
        std::lock_guard lock(state->streams_mutex);
        claimed->stream->abandon(failure{codes::device_connection_closed, "the service side left as it joined"});
        claimed.reset();
    }
    co_return claimed; // empty: answered (or gone), the caller waits for the next message
}

asio::awaitable<void> await_next_join(std::shared_ptr<relay_state> state, std::shared_ptr<wss_stream> ws, std::string peer)
{
    for (;;) {
        // The proxies keep a connection 2 s (client.cpp); the relay waits longer, so a message the
        // proxy sends at the last moment still finds it open.
        auto deadline = std::make_shared<asio::steady_timer>(ws->get_executor(), kept_connection_wait);
        auto answered = std::make_shared<bool>(false); // both on this connection's thread
        deadline->async_wait([ws, answered](const error_code& ec) {
            if (!ec && !*answered)
                ws->async_close(websocket::close_code::going_away, [ws](const error_code&) {});
        });
        ws->read_message_max(max_control_message);
        beast::flat_buffer buffer;
        auto read = co_await ws->async_read(buffer, use_nothrow);
        *answered = true;
        deadline->cancel();
        auto ec = std::get<0>(read);
        if (ec) {
            state->log->debug("peer={} kept stream connection ended: {}", peer, ec.message());
            co_return;
        }
        ws->read_message_max(max_stream_message);
        std::string text = beast::buffers_to_string(buffer.data());
        std::string type = ws->got_text() ? protocol::message_type(text) : std::string();
        std::string error;
        std::optional<claimed_side> claimed;
        if (type == "open") {
            auto open = protocol::parse_open(text, error);
            if (open) {
                claimed = co_await serve_open(state, ws, *open, peer);
                if (!claimed) {
                    if (!ws->is_open())
                        co_return;
                    continue; // answered: the connection waits for the next message
                }
            }
        } else {
            auto join = ws->got_text() ? protocol::parse_join(text, error) : std::nullopt;
            if (!ws->got_text())
                error = "expected a join or open message (text)";
            route r;
            if (join) {
                r = match_route(join->path);
                if (r.kind != route_kind::bridge) {
                    error = "malformed streaming endpoint in join";
                    join.reset();
                }
            }
            if (join) {
                claimed.emplace();
                asio::any_io_executor home;
                if (auto f = claim_side(*state, r, join->authorization, claimed->stream, claimed->side,
                                        ws->get_executor(), home)) {
                    state->log->warn("event=AuthFailed peer={} device={} endpoint=bridge streamId={} code={} "
                                     "reason=\"{}\"",
                                     peer, r.device_id, r.stream_id, f.code, f.message);
                    state->metrics.auth_failed(auth_endpoint::bridge, f);
                    co_await refuse_join(ws, f.code, f.message);
                    co_return;
                }
                if (!join->accept_request_id.empty()) {
                    // The device's answer came with its join: to the request's waiter, as if from
                    // its control connection. Too late, the stream is already given up.
                    std::shared_ptr<control_channel> channel;
                    bool answers_this = false;
                    {
                        std::lock_guard lock(state->streams_mutex);
                        channel = claimed->stream->channel.lock();
                        answers_this = claimed->side == stream_side::device &&
                                       claimed->stream->request_id == join->accept_request_id;
                    }
                    if (!answers_this) {
                        const std::string why = "\"accept\" names another request, or comes from the service side";
                        state->log->warn("event=BadRequest peer={} endpoint=bridge reason=\"{}\"", peer, why);
                        {
                            std::lock_guard lock(state->streams_mutex);
                            claimed->stream->abandon(failure{codes::bad_request, why});
                        }
                        co_await refuse_join(ws, codes::bad_request, why);
                        co_return;
                    }
                    if (channel)
                        channel->accept_by_join(join->accept_request_id);
                }
                const std::string joined = protocol::joined_message(r.stream_id);
                auto sent = co_await send_text(*ws, joined);
                if (sent) {
                    // Gone between its join and the answer: the stream waits for a side that will not come.
                    std::lock_guard lock(state->streams_mutex);
                    claimed->stream->abandon(failure{codes::gateway_timeout,
                                                     std::string(side_name(claimed->side)) + " side left as it joined"});
                    co_return;
                }
            }
        }
        if (!claimed) {
            state->log->warn("event=BadRequest peer={} endpoint=bridge reason=\"{}\"", peer, error);
            co_await refuse_join(ws, codes::bad_request, error);
            co_return;
        }
        joined_side me{ws, true, std::move(peer), true};
        co_await pair_side(state, me, std::move(claimed->stream), claimed->side);
        co_return;
    }
}

asio::awaitable<void> pair_side(std::shared_ptr<relay_state> state, const joined_side& me,
                                std::shared_ptr<pending_stream> s, stream_side side)
{
    auto& ws = me.ws;
    auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor);
    joined_side other;
    {
        std::lock_guard lock(state->streams_mutex);
        if (s->waiting) {
            other = joined_side{std::move(s->waiting), s->waiting_kept, std::move(s->waiting_peer), s->waiting_on_kept};
            state->streams.erase(s->stream_id);
            s->wake_waiting_side();
            s->waiting_timer.reset();
        } else {
            s->waiting = ws;
            s->waiting_side = side;
            s->waiting_timer = timer;
            s->waiting_kept = me.kept;
            s->waiting_peer = me.peer;
            s->waiting_on_kept = me.on_kept;
            timer->expires_at(s->expires_at);
        }
    }
    if (other.ws) {
        if (side == stream_side::service)
            co_await run_pair(state, s, me, other);
        else
            co_await run_pair(state, s, other, me);
        co_return;
    }

    bool gave_up = false;
    failure abandoned;
    for (;;) {
        co_await timer->async_wait(use_nothrow);
        std::lock_guard lock(state->streams_mutex);
        abandoned = s->abandoned;
        if (s->waiting != ws)
            break; // the other side took it and runs the pump
        // Woken early: the deadline moved (the device accepted: now + connect timeout) or the
        // stream was abandoned. Wait for what is left, if anything.
        if (!abandoned && std::chrono::steady_clock::now() < s->expires_at) {
            timer->expires_at(s->expires_at);
            continue;
        }
        s->waiting.reset();
        s->waiting_timer.reset();
        state->streams.erase(s->stream_id);
        gave_up = true;
        break;
    }
    if (gave_up) {
        int code = abandoned ? abandoned.code : codes::gateway_timeout;
        std::string why = abandoned ? abandoned.message
                                    : std::string(side_name(side == stream_side::service ? stream_side::device
                                                                                         : stream_side::service)) +
                                          " side never joined";
        state->log->info("event=StreamClosed device={} stream={} streamId={} result={} reason=\"{}\"", s->device_id,
                         s->stream_name, s->stream_id, code, why);
        state->metrics.stream_not_joined(code);
        co_await ws->async_close(
            websocket::close_reason(websocket::close_code::internal_error, protocol::close_reason_text(code, why)),
            use_nothrow);
    }
    // Otherwise the side that joined second runs the pump with this connection.
}

} // namespace

} // namespace sg::relay
