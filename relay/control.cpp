// Devices' control connections and stream creation: the service's POST becomes a request on
// the device's control connection, and the device's answer becomes the POST's response.
#include <charconv>
#include <boost/asio/co_spawn.hpp>
#include <boost/json.hpp>
#include "common/crypto.hpp"
#include "relay/cluster.hpp"
#include "relay/internal.hpp"
#include "relay/x509_auth.hpp"

namespace sg::relay {

void pending_answer::deliver(std::optional<protocol::stream_response_message> a)
{
    {
        std::lock_guard lock(mutex);
        if (done)
            return;
        done = true;
        answer = std::move(a);
    }
    asio::post(timer->get_executor(), [t = timer] { t->cancel(); });
}

control_channel::control_channel(std::string device_id, std::string credential, const char* protocol)
    : device_id_(std::move(device_id)), credential_(std::move(credential)), protocol_(protocol)
{
}

void control_channel::send_request(const protocol::stream_request_message& m, std::shared_ptr<pending_answer> waiter)
{
    {
        std::lock_guard lock(mutex_);
        if (closed_) {
            waiter->deliver(std::nullopt);
            return;
        }
        pending_.emplace(m.request_id, std::move(waiter));
    }
    transmit(m);
}

void control_channel::forget_request(const std::string& request_id)
{
    std::lock_guard lock(mutex_);
    pending_.erase(request_id);
}

bool control_channel::deliver(protocol::stream_response_message answer)
{
    std::shared_ptr<pending_answer> waiter;
    {
        std::lock_guard lock(mutex_);
        auto it = pending_.find(answer.request_id);
        if (it != pending_.end()) {
            waiter = std::move(it->second);
            pending_.erase(it);
        }
    }
    if (!waiter)
        return false;
    waiter->deliver(std::move(answer));
    return true;
}

void control_channel::end()
{
    std::unordered_map<std::string, std::shared_ptr<pending_answer>> orphans;
    {
        std::lock_guard lock(mutex_);
        closed_ = true;
        orphans.swap(pending_);
    }
    for (auto& [id, waiter] : orphans)
        waiter->deliver(std::nullopt);
}

bool control_channel::ended()
{
    std::lock_guard lock(mutex_);
    return closed_;
}

ws_control_channel::ws_control_channel(std::string device_id, std::string credential, std::shared_ptr<wss_stream> ws)
    : control_channel(std::move(device_id), std::move(credential), "websocket"),
      link_(std::make_shared<control_link>(std::move(ws)))
{
}

void ws_control_channel::transmit(const protocol::stream_request_message& m) { link_->send(protocol::serialize(m)); }

void ws_control_channel::close(int code, std::string_view message)
{
    link_->close(websocket::close_reason(static_cast<websocket::close_code>(4000 + code % 1000), protocol::close_reason_text(code, message)));
}

void ws_control_channel::on_message(std::string_view text, spdlog::logger& log)
{
    std::string error;
    auto m = protocol::parse_stream_response(text, error);
    if (!m) {
        log.warn("device={} sent an invalid control message: {}", device_id(), error);
        close(codes::bad_request, "invalid control message: " + error);
        return;
    }
    // A late answer (after the timeout) or one to a request never sent: ignore it, keep the device.
    if (!deliver(std::move(*m)))
        log.info("device={} answered unknown or expired request", device_id());
}

asio::awaitable<error_code> ws_control_channel::run(spdlog::logger& log)
{
    control_link::message_handler handler = [this, &log](std::string_view text) { on_message(text, log); };
    auto ec = co_await link_->run(handler);
    end();
    co_return ec;
}

std::shared_ptr<control_channel> relay_state::find_device(const std::string& id)
{
    std::lock_guard lock(devices_mutex);
    auto it = devices.find(id);
    return it == devices.end() ? nullptr : it->second;
}

void relay_state::expire_streams()
{
    auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(streams_mutex);
    for (auto it = streams.begin(); it != streams.end();) {
        // A stream with a waiting side is expired by that side's own timer.
        if (!it->second->waiting && it->second->expires_at < now)
            it = streams.erase(it);
        else
            ++it;
    }
}

namespace {

// connectionState is informational: a device stays connected while the database is away.
void note_connection_state(relay_state& state, const std::string& device_id, bool connected)
{
    try {
        state.reg->set_connection_state(device_id, connected);
    } catch (const std::exception& e) {
        state.log->warn("event=RegistryUnavailable device={} task=connectionState reason=\"{}\"", device_id, e.what());
    }
}

} // namespace

void relay_state::revalidate_devices(const std::string& device_id)
{
    std::vector<std::shared_ptr<control_channel>> channels;
    {
        std::lock_guard lock(devices_mutex);
        if (device_id.empty()) {
            for (auto& [id, ch] : devices)
                channels.push_back(ch);
        } else if (auto it = devices.find(device_id); it != devices.end()) {
            channels.push_back(it->second);
        }
    }
    // Every device: one statement for the whole registry rather than a round trip per device.
    const bool whole_registry = device_id.empty() && channels.size() > 1;
    std::unordered_map<std::string, device_identity> all;
    if (whole_registry)
        for (auto& d : reg->list_devices())
            all.emplace(d.device_id, std::move(d));
    for (auto& ch : channels) {
        std::optional<device_identity> d;
        if (whole_registry) {
            if (auto it = all.find(ch->device_id()); it != all.end())
                d = it->second;
        } else {
            d = reg->find_device(ch->device_id());
        }
        std::string why;
        if (!d)
            why = "device was deleted";
        else if (d->status != device_status::enabled)
            why = "device was disabled";
        else if (!auth->credential_still_valid(*d, ch->credential()))
            why = ch->credential().starts_with("x509ca:") ? "device CA was deleted or replaced"
                                                          : "device credentials were renewed";
        if (!why.empty()) {
            log->info("event=DeviceRevoked device={} reason=\"{}\"", ch->device_id(), why);
            ch->close(codes::unauthorized, why);
        }
    }
}

int relay_state::lane_of(const asio::any_io_executor& ex) const
{
    for (std::size_t i = 0; i < lanes.size(); ++i)
        if (lanes[i] == ex)
            return static_cast<int>(i);
    return -1;
}

void pending_stream::wake_waiting_side()
{
    if (waiting_timer)
        asio::post(waiting_timer->get_executor(), [t = waiting_timer] { t->cancel(); });
}

void pending_stream::abandon(failure why)
{
    abandoned = std::move(why);
    expires_at = std::chrono::steady_clock::now(); // a side still in its handshake gives up as it starts to wait
    wake_waiting_side();
}

void relay_state::abandon_device_streams(const std::string& device_id)
{
    std::lock_guard lock(streams_mutex);
    for (auto& [id, s] : streams)
        if (s->device_id == device_id && !s->device_joined)
            s->abandon(failure{codes::device_connection_closed, "the device disconnected before joining"});
}

void relay_state::drop_stream(pending_stream& s, failure why)
{
    std::lock_guard lock(streams_mutex);
    streams.erase(s.stream_id);
    // A side may have joined before the answer (a device joins as it accepts).
    s.abandon(std::move(why));
}

asio::awaitable<void> serve_control(std::shared_ptr<relay_state> state, tls_stream stream, request_type req, route r,
                                    std::string peer)
{
    device_identity device;
    std::string credential;
    auto certificate = state->device_cas.inspect(stream.native_handle(), *state->reg);
    auto refuse = [&](const failure& f) { return error_response(req, f.code, f.message); };
    failure f;
    try {
        f = state->auth->authorize_device(req[http::field::authorization], r.device_id, &device, &certificate,
                                          &credential);
    } catch (const registry_unavailable& e) {
        // The device proxy backs off and tries again, as for any 5xx answer.
        state->log->warn("event=RegistryUnavailable peer={} device={} endpoint=control reason=\"{}\"", peer,
                         r.device_id, e.what());
        f = failure{codes::registry_unavailable, std::string(registry_unavailable_message)};
    }
    if (f.code == codes::registry_unavailable) {
        auto res = refuse(f);
        res.keep_alive(false);
        co_await http::async_write(stream, res, use_nothrow);
        co_return;
    }
    if (f) {
        state->log->warn("event=AuthFailed peer={} device={} endpoint=control code={} reason=\"{}\"", peer, r.device_id,
                         f.code, f.message);
        state->metrics.auth_failed(auth_endpoint::control, f);
        auto res = refuse(f);
        res.keep_alive(false);
        co_await http::async_write(stream, res, use_nothrow);
        co_return;
    }
    if (auto f = state->admit_device(r.device_id, peer)) {
        auto res = refuse(f);
        res.set(http::field::retry_after, "30");
        res.keep_alive(false);
        co_await http::async_write(stream, res, use_nothrow);
        co_return;
    }
    auto ws = std::make_shared<wss_stream>(std::move(stream));
    configure_control_websocket(*ws, beast::role_type::server, state->options.max_control_message);
    // The device counts as online before its 101 leaves: a service that learns it is connected
    // and asks for a stream at once finds the channel (requests queue until the link runs).
    auto channel = std::make_shared<ws_control_channel>(r.device_id, credential, ws);
    auto replaced = state->attach_device(channel);
    auto accepted = co_await ws->async_accept(req, use_nothrow);
    if (auto aec = std::get<0>(accepted)) {
        state->device_offline(channel, peer, false, "control handshake failed: " + aec.message());
        state->restore_device(channel, std::move(replaced)); // the older connection still serves the device
        co_return;
    }
    state->device_online(channel, std::move(replaced), peer);
    auto ec = co_await channel->run(*state->log);
    state->device_offline(channel, peer, true, is_benign(ec) ? "closed" : ec.message());
}

failure relay_state::admit_device(const std::string& device_id, const std::string& peer)
{
    if (find_device(device_id))
        return {}; // replaces a connection: the count stays
    std::size_t connected = 0;
    {
        std::lock_guard lock(devices_mutex);
        connected = devices.size();
    }
    if (connected < options.max_control_connections)
        return {};
    log->warn("event=LimitHit limit=controlConnections device={} peer={}", device_id, peer);
    metrics.limit_hit("max_devices");
    return failure{codes::throttled, "too many connected devices on this relay"};
}

std::shared_ptr<control_channel> relay_state::attach_device(const std::shared_ptr<control_channel>& channel)
{
    std::lock_guard lock(devices_mutex);
    auto& slot = devices[channel->device_id()];
    auto replaced = std::move(slot);
    slot = channel;
    return replaced;
}

void relay_state::restore_device(const std::shared_ptr<control_channel>& failed, std::shared_ptr<control_channel> replaced)
{
    if (!replaced)
        return;
    std::lock_guard lock(devices_mutex);
    auto it = devices.find(failed->device_id());
    // Not over a newer connection, nor a connection that ended meanwhile: device_offline ends a
    // channel before it looks for it here, so one that has not ended yet will still remove itself.
    if ((it == devices.end() || it->second == failed) && !replaced->ended())
        devices[failed->device_id()] = std::move(replaced);
}

void relay_state::device_online(const std::shared_ptr<control_channel>& channel, std::shared_ptr<control_channel> replaced,
                                const std::string& peer)
{
    const auto& id = channel->device_id();
    if (replaced) {
        log->info("event=DeviceReplaced device={} reason=\"a newer control connection replaced this one\" old={} new={}", id,
                  replaced->protocol(), channel->protocol());
        replaced->close(codes::connection_replaced, "a newer connection for this device replaced this one");
    }
    if (cluster)
        cluster->device_online(channel);
    note_connection_state(*this, id, true);
    metrics.device_connected();
    const auto& credential = channel->credential();
    log->info("event=DeviceConnected device={} peer={} auth={} protocol={}", id, peer,
              credential.substr(0, credential.find(':')), channel->protocol());
    // A key renewed between authorization and now must not slip through.
    try {
        revalidate_devices(id);
    } catch (const std::exception& e) {
        log->warn("event=RegistryUnavailable device={} task=revalidate reason=\"{}\"", id, e.what());
    }
}

void relay_state::device_offline(const std::shared_ptr<control_channel>& channel, const std::string& peer, bool online,
                                 std::string_view reason)
{
    const auto& id = channel->device_id();
    channel->end(); // first: restore_device must not put back a channel about to look for itself
    bool current = false;
    {
        std::lock_guard lock(devices_mutex);
        auto it = devices.find(id);
        current = it != devices.end() && it->second == channel;
        if (current)
            devices.erase(it);
    }
    if (!online) {
        log->info("peer={} device={} {}", peer, id, reason);
        return;
    }
    if (current) {
        if (!channel->displaced)
            note_connection_state(*this, id, false);
        abandon_device_streams(id);
        if (cluster)
            cluster->device_offline(channel);
    }
    log->info("event=DeviceDisconnected device={} peer={} protocol={} reason=\"{}\"", id, peer, channel->protocol(), reason);
}

asio::awaitable<http::response<http::string_body>> open_stream(std::shared_ptr<relay_state> state, const request_type& req,
                                                               const route& r, const std::string& peer)
{
    auto resource = "/twins/" + r.device_id + "/streams/" + r.stream_name;
    if (auto f = state->auth->authorize_policy(req[http::field::authorization], permission::service_connect, resource)) {
        state->log->warn("event=AuthFailed peer={} endpoint=streams device={} code={} reason=\"{}\"", peer, r.device_id,
                         f.code, f.message);
        state->metrics.auth_failed(auth_endpoint::streams, f);
        state->metrics.stream_rejected(rejection::unauthorized);
        co_return error_response(req, f.code, f.message);
    }
    auto seconds_header = [&](std::string_view name, int fallback) {
        auto text = req[name];
        int value = 0;
        auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        return (text.empty() || ec != std::errc{} || p != text.data() + text.size() || value <= 0 || value > 300)
                   ? std::chrono::seconds(fallback)
                   : std::chrono::seconds(value);
    };
    stream_offer offer{r.device_id, r.stream_name, seconds_header("iothub-streaming-connect-timeout-in-seconds", 60),
                       seconds_header("iothub-streaming-response-timeout-in-seconds", 60)};

    if (!state->credentials->find_device(r.device_id)) {
        state->metrics.stream_rejected(rejection::device_not_found);
        co_return error_response(req, codes::device_not_found, "device " + r.device_id + " is not registered");
    }
    if (state->cluster && state->cluster->fenced()) {
        state->log->warn("event=StreamRejected device={} stream={} result=503001 reason=\"this node has no valid cluster "
                         "lease\"", r.device_id, r.stream_name);
        auto res = error_response(req, codes::relay_shutting_down,
                                  "this relay cannot renew its cluster lease; try another relay or later");
        res.set(http::field::retry_after, "5");
        co_return res;
    }
    auto channel = state->find_device(r.device_id);
    if (!channel && state->cluster) {
        auto res = co_await state->cluster->open_remote_stream(req, std::move(offer));
        co_return res;
    }
    auto res = co_await offer_stream(state, req, std::move(offer), std::move(channel));
    co_return res;
}

asio::awaitable<http::response<http::string_body>> offer_stream(std::shared_ptr<relay_state> state, const request_type& req,
                                                                stream_offer offer, std::shared_ptr<control_channel> channel)
{
    const auto& r = offer; // device_id, stream_name
    const auto connect_timeout = offer.connect_timeout;
    const auto response_timeout = offer.response_timeout;
    if (!channel) {
        state->log->info("event=StreamRejected device={} stream={} result=404103 reason=\"device not online\"", r.device_id,
                         r.stream_name);
        state->metrics.stream_rejected(rejection::device_not_online);
        co_return error_response(req, codes::device_not_online, "device " + r.device_id + " is not online");
    }

    auto admitted = state->admission->admit(r.device_id, std::chrono::steady_clock::now());
    if (!admitted.slot) {
        state->log->warn("event=StreamRejected device={} stream={} result=429001 reason=\"{}\"", r.device_id,
                         r.stream_name, admitted.refused.message);
        state->metrics.stream_rejected(rejection::throttled);
        state->metrics.limit_hit(admitted.limit);
        auto res = error_response(req, admitted.refused.code, admitted.refused.message);
        res.set(http::field::retry_after, std::to_string(admitted.retry_after.count()));
        co_return res;
    }
    auto pending = std::make_shared<pending_stream>();
    pending->slot = std::move(admitted.slot);
    pending->stream_id = to_lower(hex_upper(random_bytes(16)));
    if (state->cluster) // any node that takes a side's connection finds the stream's node by its id
        pending->stream_id = state->cluster->node_id() + "." + pending->stream_id;
    pending->device_id = r.device_id;
    pending->stream_name = r.stream_name;
    pending->service_token = random_token();
    pending->device_token = random_token();
    pending->requested_at = std::chrono::steady_clock::now();
    pending->expires_at = pending->requested_at + response_timeout + connect_timeout;
    if (state->keeps_stream_connections()) {
        pending->home = co_await asio::this_coro::executor;
        pending->lane = state->lane_of(pending->home);
    }
    std::string url = state->stream_url_base + "/bridges/" + state->hub_name + "/" + url_encode(r.device_id) + "/" +
                      pending->stream_id;
    {
        std::lock_guard lock(state->streams_mutex);
        state->streams.emplace(pending->stream_id, pending);
    }
    state->log->info("event=StreamRequested device={} stream={} streamId={}", r.device_id, r.stream_name, pending->stream_id);

    auto waiter = std::make_shared<pending_answer>(co_await asio::this_coro::executor);
    protocol::stream_request_message m{to_lower(hex_upper(random_bytes(8))), r.stream_name, pending->stream_id, url,
                                       pending->device_token, pending->lane};
    waiter->timer->expires_after(response_timeout);
    {
        std::lock_guard lock(state->streams_mutex);
        pending->channel = channel;
        pending->request_id = m.request_id;
    }
    channel->send_request(m, waiter);
    bool answered = false;
    {
        std::lock_guard lock(waiter->mutex);
        answered = waiter->done;
    }
    if (!answered)
        co_await waiter->timer->async_wait(use_nothrow);

    std::optional<protocol::stream_response_message> answer;
    bool timed_out = false;
    {
        std::lock_guard lock(waiter->mutex);
        timed_out = !waiter->done;
        waiter->done = true;
        answer = waiter->answer;
    }
    if (timed_out) {
        channel->forget_request(m.request_id);
        state->drop_stream(*pending, failure{codes::gateway_timeout, "the device did not answer the stream request in time"});
        state->log->info("event=StreamRejected device={} stream={} streamId={} result=504101 reason=\"no answer in {}s\"",
                         r.device_id, r.stream_name, pending->stream_id, response_timeout.count());
        state->metrics.stream_rejected(rejection::device_timeout);
        co_return error_response(req, codes::gateway_timeout, "Timed out waiting for the response from device.");
    }
    if (!answer) {
        state->drop_stream(*pending, failure{codes::device_connection_closed, "the device disconnected before answering"});
        state->log->info("event=StreamRejected device={} stream={} streamId={} result=404104 reason=\"device disconnected\"",
                         r.device_id, r.stream_name, pending->stream_id);
        state->metrics.stream_rejected(rejection::device_disconnected);
        co_return error_response(req, codes::device_connection_closed, "the device disconnected before answering");
    }

    http::response<http::string_body> res{http::status::ok, req.version()};
    res.keep_alive(req.keep_alive());
    res.set(http::field::content_type, "application/json; charset=utf-8");
    boost::json::object body{{"streamName", r.stream_name}, {"isAccepted", answer->accepted}};
    if (answer->accepted) {
        {
            std::lock_guard lock(state->streams_mutex);
            pending->expires_at = std::chrono::steady_clock::now() + connect_timeout;
            // A device that joined before its answer arrived waits on the longer deadline: wake it
            // to wait for the new one (else a service that never joins holds it for the response
            // timeout as well).
            pending->wake_waiting_side();
        }
        res.set("iothub-streaming-is-accepted", "True");
        res.set("iothub-streaming-url", url);
        res.set("iothub-streaming-auth-token", pending->service_token);
        if (pending->lane >= 0)
            res.set(protocol::lane_header, std::to_string(pending->lane));
        body["uri"] = url;
        body["authorizationToken"] = pending->service_token;
        state->log->info("event=StreamAccepted device={} stream={} streamId={}", r.device_id, r.stream_name,
                         pending->stream_id);
    } else {
        state->drop_stream(*pending, failure{codes::bad_request, "the device rejected the stream it had joined"});
        res.set("iothub-streaming-is-accepted", "False");
        std::string reason;
        for (char c : answer->reason) // a header value holds no control characters
            reason += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
        res.set("iothub-streaming-rejection-reason", reason);
        body["reason"] = answer->reason;
        state->log->info("event=StreamRejected device={} stream={} streamId={} result=rejected reason=\"{}\"", r.device_id,
                         r.stream_name, pending->stream_id, reason);
        state->metrics.stream_rejected(rejection::rejected_by_device);
    }
    res.body() = boost::json::serialize(body);
    res.prepare_payload();
    co_return res;
}

} // namespace sg::relay
