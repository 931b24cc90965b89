// The relay's listener and HTTP sessions: TLS handshake, one request at a time, then either a
// REST answer or a hand-off to the control channel or the streaming endpoint.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/json.hpp>
#include <cstring>
#include <optional>
#include <sys/socket.h>
#include <thread>
#include "common/crypto.hpp"
#include "common/connection_string.hpp"
#include "common/log.hpp"
#include "common/runtime.hpp"
#include "common/tls.hpp"
#include "relay/admin_http.hpp"
#include "relay/certificates.hpp"
#include "relay/cluster.hpp"
#include "relay/registry_cache.hpp"
#include "relay/data_dir.hpp"
#include "relay/device_json.hpp"
#include "relay/internal.hpp"

namespace sg::relay {
namespace json = boost::json;

namespace {

constexpr std::size_t max_body_bytes = 64 * 1024;
constexpr auto keep_alive_idle = std::chrono::seconds(60);

std::string endpoint_text(const tcp::endpoint& ep)
{
    auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(ep.port());
}

http::response<http::string_body> json_response(const request_type& req, http::status status, const json::value& body)
{
    http::response<http::string_body> res{status, req.version()};
    res.set(http::field::content_type, "application/json; charset=utf-8");
    res.keep_alive(req.keep_alive());
    res.body() = json::serialize(body);
    res.prepare_payload();
    return res;
}

// The etag an If-Match header names: "etag", W/"etag" and a bare etag are the same one; "*" stays.
std::string etag_of_if_match(std::string_view v)
{
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t'))
        v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t'))
        v.remove_suffix(1);
    if (v.starts_with("W/"))
        v.remove_prefix(2);
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"')
        v = v.substr(1, v.size() - 2);
    return std::string(v);
}

// A device with its etag also as the (quoted) ETag header, as IoT Hub sends it.
http::response<http::string_body> device_response(const request_type& req, const device_identity& d)
{
    auto res = json_response(req, http::status::ok, to_json(d));
    res.set(http::field::etag, "\"" + d.etag + "\"");
    return res;
}

// GET /devices?top=N (IoT Hub's Get Devices): at most N devices, 1000 when absent and at most.
constexpr std::size_t max_devices_per_list = 1000;
std::optional<std::size_t> list_top(std::string_view target)
{
    auto q = target.find('?');
    if (q == std::string_view::npos)
        return max_devices_per_list;
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
        auto amp = query.find('&');
        std::string_view pair = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        if (!pair.starts_with("top="))
            continue;
        std::string_view value = pair.substr(4);
        std::size_t n = 0;
        if (value.empty() || value.size() > 4)
            return std::nullopt;
        for (char c : value) {
            if (c < '0' || c > '9')
                return std::nullopt;
            n = n * 10 + static_cast<std::size_t>(c - '0');
        }
        if (n < 1 || n > max_devices_per_list)
            return std::nullopt;
        return n;
    }
    return max_devices_per_list;
}

// One line per registry change, whoever made it; `at` when the entry comes from the audit trail.
void log_registry_change(spdlog::logger& log, const audit_entry& e)
{
    if (e.time.empty())
        log.info("event=RegistryChange source=\"{}\" op={} subject={} detail=\"{}\"", e.actor, e.action, e.subject,
                 e.detail);
    else
        log.info("event=RegistryChange source=\"{}\" op={} subject={} detail=\"{}\" at={}", e.actor, e.action,
                 e.subject, e.detail, e.time);
}

// REST changes are logged here and kept in the audit trail beside the admin commands' ones.
void record_change(relay_state& state, const std::string& peer, const char* action, const std::string& device,
                   const std::string& detail)
{
    audit_entry e{0, {}, "relay rest peer=" + peer, action, device, detail};
    state.reg->append_audit(e);
    log_registry_change(*state.log, e);
}

http::response<http::string_body> handle_device(relay_state& state, const request_type& req, const route& r,
                                                const std::string& peer)
{
    bool read_only = req.method() == http::verb::get;
    if (!read_only && req.method() != http::verb::put && req.method() != http::verb::delete_)
        return error_response(req, codes::method_not_allowed, "use GET, PUT or DELETE on /devices/{id}");
    auto path = "/devices/" + r.device_id;
    if (auto f = state.auth->authorize_policy(req[http::field::authorization],
                                              read_only ? permission::registry_read : permission::registry_write, path)) {
        state.log->warn("event=AuthFailed peer={} endpoint=registry device={} code={} reason=\"{}\"", peer, r.device_id,
                        f.code, f.message);
        state.metrics.auth_failed(auth_endpoint::registry, f);
        return error_response(req, f.code, f.message);
    }
    const std::string if_match = etag_of_if_match(req[http::field::if_match]);

    if (req.method() == http::verb::get) {
        auto d = state.reg->find_device(r.device_id);
        if (!d)
            return error_response(req, codes::device_not_found, "device not found");
        return device_response(req, *d);
    }
    if (req.method() == http::verb::delete_) {
        auto result = state.reg->delete_device(r.device_id, if_match);
        if (result == registry_result::not_found)
            return error_response(req, codes::device_not_found, "device not found");
        if (result == registry_result::etag_mismatch)
            return error_response(req, codes::precondition_failed, "If-Match does not match the device's etag");
        record_change(state, peer, "device-delete", r.device_id, "");
        state.revalidate_devices(r.device_id);
        http::response<http::string_body> res{http::status::no_content, req.version()};
        res.keep_alive(req.keep_alive());
        return res;
    }
    json::error_code ec;
    auto body = json::parse(req.body(), ec);
    if (ec)
        return error_response(req, codes::bad_request, "body is not valid JSON");
    auto existing = state.reg->find_device(r.device_id);
    device_identity d = existing ? *existing : device_identity{};
    d.device_id = r.device_id;
    if (auto error = apply_json(d, body); !error.empty())
        return error_response(req, codes::bad_request, error);
    // As IoT Hub: PUT without If-Match creates, and is 409 for a device that exists (provisioning
    // scripts tell "created" from "already there" by it); an update sends If-Match: "*" or the etag.
    const std::string already_exists = "device " + r.device_id +
                                       " already exists (to update it, send If-Match: \"*\" or its etag)";
    if (existing && if_match.empty())
        return error_response(req, codes::already_exists, already_exists);
    if (!existing) {
        if (!if_match.empty())
            return error_response(req, codes::device_not_found, "device not found (If-Match is for updates)");
        if (state.reg->create_device(d) == registry_result::already_exists)
            return error_response(req, codes::already_exists, already_exists);
        record_change(state, peer, "device-create", r.device_id,
                      "auth=" + std::string(to_string(d.authentication)) + " status=" + std::string(to_string(d.status)));
        return device_response(req, d);
    }
    auto result = state.reg->update_device(d, if_match);
    if (result == registry_result::etag_mismatch)
        return error_response(req, codes::precondition_failed, "If-Match does not match the device's etag");
    if (result == registry_result::not_found)
        return error_response(req, codes::device_not_found, "device not found");
    record_change(state, peer, "device-update", r.device_id, "status=" + std::string(to_string(d.status)));
    state.revalidate_devices(r.device_id);
    return device_response(req, d);
}

asio::awaitable<http::response<http::string_body>> handle_rest(std::shared_ptr<relay_state> state, const request_type& req,
                                                               const route& r, const std::string& peer)
{
    switch (r.kind) {
    case route_kind::create_stream:
        if (req.method() != http::verb::post)
            co_return error_response(req, codes::method_not_allowed, "use POST to create a stream");
        {
            auto res = co_await open_stream(state, req, r, peer);
            co_return res;
        }
    case route_kind::device:
        co_return handle_device(*state, req, r, peer);
    case route_kind::device_list: {
        if (req.method() != http::verb::get)
            co_return error_response(req, codes::method_not_allowed, "use GET on /devices");
        if (auto f = state->auth->authorize_policy(req[http::field::authorization], permission::registry_read, "/devices")) {
            state->log->warn("event=AuthFailed peer={} endpoint=registry code={} reason=\"{}\"", peer, f.code, f.message);
            state->metrics.auth_failed(auth_endpoint::registry, f);
            co_return error_response(req, f.code, f.message);
        }
        auto top = list_top(req.target());
        if (!top)
            co_return error_response(req, codes::bad_request,
                                     "top must be a whole number from 1 to " + std::to_string(max_devices_per_list));
        json::array list;
        for (auto& d : state->reg->list_devices()) {
            if (list.size() == *top)
                break;
            list.push_back(to_json(d));
        }
        co_return json_response(req, http::status::ok, list);
    }
    case route_kind::invalid:
        state->log->warn("event=BadRequest peer={} reason=\"{}\"", peer, r.reason);
        co_return error_response(req, r.reason == "invalid device id" ? codes::invalid_device_id : codes::bad_request, r.reason);
    case route_kind::device_control:
    case route_kind::bridge:
    case route_kind::mqtt_websocket:
        co_return error_response(req, codes::bad_request, "this endpoint needs a WebSocket upgrade");
    case route_kind::not_found:
        break;
    }
    co_return error_response(req, codes::route_not_found, "no such endpoint");
}

} // namespace

http::response<http::string_body> error_response(const request_type& req, int code, std::string_view message)
{
    http::response<http::string_body> res{static_cast<http::status>(http_status_of(code)), req.version()};
    res.set(http::field::content_type, "application/json; charset=utf-8");
    res.set("iothub-errorcode", error_name(code)); // what IoT Hub's SDKs map their exceptions from
    res.keep_alive(req.keep_alive() && code / 1000 != 400);
    res.body() = protocol::error_body(code, message);
    res.prepare_payload();
    return res;
}

asio::awaitable<void> serve_connection(std::shared_ptr<relay_state> state, tcp::socket socket)
{
    error_code ec;
    auto remote = socket.remote_endpoint(ec);
    std::string peer = ec ? "?" : endpoint_text(remote);
    socket.set_option(tcp::no_delay(true), ec);
    tls_stream stream(std::move(socket), *state->tls);
    // One deadline covers TLS handshake and the first request: a client that stalls is cut off.
    stream.expires_after(state->options.handshake_timeout);
    auto [hec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_nothrow);
    if (hec) {
        state->log->info("event=HandshakeFailed peer={} reason=\"{}\"", peer, hec.message());
        co_return;
    }
    state->log->debug("peer={} tls={} resumed={}", peer, SSL_get_version(stream.native_handle()),
                      SSL_session_reused(stream.native_handle()) == 1);
    beast::flat_buffer buffer;
    for (bool first = true;; first = false) {
        http::request_parser<http::string_body> parser;
        parser.header_limit(static_cast<std::uint32_t>(state->options.max_header_bytes));
        parser.body_limit(max_body_bytes);
        if (!first)
            stream.expires_after(keep_alive_idle);
        auto [rec, n] = co_await http::async_read(stream, buffer, parser, use_nothrow);
        if (rec) {
            if (rec != http::error::end_of_stream && !is_benign(rec))
                state->log->warn("event=BadRequest peer={} reason=\"{}\"", peer, rec.message());
            if (rec == http::error::header_limit || rec == http::error::body_limit || rec == http::error::bad_target ||
                rec.category() == http::make_error_code(http::error::bad_method).category()) {
                request_type dummy;
                auto res = error_response(dummy, codes::bad_request, "malformed or oversized request: " + rec.message());
                res.keep_alive(false);
                co_await http::async_write(stream, res, use_nothrow);
            }
            break;
        }
        request_type req = parser.release();
        route r = match_route(req.target());
        if (websocket::is_upgrade(req) && (r.kind == route_kind::device_control || r.kind == route_kind::bridge ||
                                           r.kind == route_kind::mqtt_websocket)) {
            stream.expires_never();
            // The WebSocket has buffers of its own: this one would sit idle for the connection's life.
            buffer.consume(buffer.size());
            buffer.shrink_to_fit();
            if (r.kind == route_kind::device_control)
                co_await serve_control(state, std::move(stream), std::move(req), std::move(r), peer);
            else if (r.kind == route_kind::mqtt_websocket)
                co_await serve_mqtt_websocket(state, std::move(stream), std::move(req), peer);
            else
                co_await serve_bridge(state, std::move(stream), std::move(req), std::move(r), peer);
            co_return;
        }
        http::response<http::string_body> res;
        try {
            res = co_await handle_rest(state, req, r, peer);
        } catch (const registry_unavailable& e) {
            // The log names the database; a client, maybe not yet authenticated, learns nothing of it.
            state->log->warn("event=RegistryUnavailable peer={} target={} reason=\"{}\"", peer, r.device_id, e.what());
            res = error_response(req, codes::registry_unavailable, registry_unavailable_message);
            res.set(http::field::retry_after, "5");
        } catch (const std::exception& e) {
            state->log->error("event=InternalError peer={} reason=\"{}\"", peer, e.what());
            res = error_response(req, codes::internal, "internal error");
        }
        stream.expires_after(std::chrono::seconds(30));
        auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
        if (wec || !res.keep_alive())
            break;
    }
    stream.expires_after(std::chrono::seconds(5));
    co_await stream.async_shutdown(use_nothrow);
}

} // namespace sg::relay

namespace sg::relay {

namespace {

// pool: the threads new connections go to, in turn; none for an acceptor of each thread (its
// connections stay on the thread that accepted them). mqtt: the --mqtt-listen acceptor, whose
// connections speak MQTT over TLS.
asio::awaitable<void> accept_loop(std::shared_ptr<relay_state> state, tcp::acceptor& acceptor, io_pool* pool,
                                  bool mqtt = false)
{
    while (!state->stopping) {
        auto target = pool ? asio::any_io_executor(pool->next().get_executor()) : acceptor.get_executor();
        auto accepted = co_await acceptor.async_accept(target, use_nothrow);
        auto& ec = std::get<0>(accepted);
        auto& socket = std::get<1>(accepted);
        if (ec) {
            if (ec == asio::error::operation_aborted || state->stopping)
                co_return;
            // Out of descriptors and the like: keep serving the connections we have.
            state->log->warn("accept failed: {}", ec.message());
            asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(100));
            co_await pause.async_wait(use_nothrow);
            continue;
        }
        if (!state->filter.empty()) {
            error_code pec;
            auto remote = socket.remote_endpoint(pec);
            std::optional<std::string> rule;
            if (pec || (rule = state->filter.rejects(remote.address()))) {
                // Nothing but a closed socket: no TLS, no hint of which rule matched.
                state->log->warn("event=IpFiltered peer={} rule=\"{}\"", pec ? "?" : endpoint_text(remote),
                                 rule.value_or("unknown peer"));
                socket.close(pec);
                continue;
            }
        }
        auto ex = socket.get_executor();
        if (mqtt) {
            error_code rec;
            auto remote = socket.remote_endpoint(rec);
            asio::co_spawn(ex, serve_mqtt(state, std::move(socket), rec ? "?" : endpoint_text(remote)), asio::detached);
        } else {
            asio::co_spawn(ex, serve_connection(state, std::move(socket)), asio::detached);
        }
    }
}

// The --listen port, once per thread of the pool: with SO_REUSEPORT the kernel spreads new
// connections over the threads' sockets, so a connection starts on the thread that serves it
// (one acceptor handing each connection to the next thread cost a wake-up of that thread per
// connection). Another process may join such a port group only with SO_REUSEPORT of its own and
// the same user; a plain bind first makes a second relay on a taken port fail as before.
std::vector<std::unique_ptr<tcp::acceptor>> bind_per_thread(io_pool& pool, tcp::endpoint endpoint,
                                                            const std::string& listen_text)
{
    const bool shared = pool.size() > 1;
    error_code ec;
    if (shared && endpoint.port() != 0) {
        tcp::acceptor probe(pool.main());
        probe.open(endpoint.protocol());
        probe.set_option(tcp::acceptor::reuse_address(true));
        probe.bind(endpoint, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + listen_text + ": " + ec.message());
    }
    std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
    for (std::size_t i = 0; i < (shared ? pool.size() : 1); ++i) {
        auto& a = *acceptors.emplace_back(std::make_unique<tcp::acceptor>(pool.context(i)));
        a.open(endpoint.protocol());
        a.set_option(tcp::acceptor::reuse_address(true));
        if (shared) {
            int on = 1;
            if (::setsockopt(a.native_handle(), SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0)
                throw std::runtime_error("cannot listen on " + listen_text + ": SO_REUSEPORT: " + std::strerror(errno));
        }
        a.bind(endpoint, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + listen_text + ": " + ec.message());
        endpoint.port(a.local_endpoint().port()); // port 0: the others take the one the first got
    }
    return acceptors;
}

// Where streaming URLs point: --public-url (wss://host:port or host:port), else the HostName.
std::string stream_url_base(std::string public_url, const std::string& host_name)
{
    if (public_url.empty())
        return "wss://" + host_name;
    if (public_url.starts_with("https://"))
        public_url = "wss://" + public_url.substr(8);
    if (!public_url.starts_with("wss://"))
        public_url = "wss://" + public_url;
    while (public_url.ends_with("/"))
        public_url.pop_back();
    auto authority = public_url.substr(6);
    if (authority.empty() || authority.find('/') != std::string::npos)
        throw config_error("--public-url: expected wss://HOST:PORT, got \"" + public_url + "\"");
    return public_url;
}

asio::awaitable<void> housekeeping(std::shared_ptr<relay_state> state)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    auto seen = state->reg->external_change_counter();
    auto audited = state->reg->last_audit_id();
    constexpr auto full_check_interval = std::chrono::minutes(5);
    auto last_full_check = std::chrono::steady_clock::now();
    while (!state->stopping) {
        timer.expires_after(std::chrono::milliseconds(500));
        co_await timer.async_wait(use_nothrow);
        state->expire_streams();
        // Admin commands run beside the relay: a renewed key, a disabled or deleted device
        // takes effect on live control connections within half a second.
        auto now = state->reg->external_change_counter();
        if (now == seen)
            continue;
        try {
            constexpr std::size_t batch = 1000;
            auto entries = state->reg->audit_after(audited, batch);
            // Re-check only the devices the entries name when each one is a device's change;
            // anything else (a policy, a CA, a change without an entry) re-checks every device,
            // as does one pass every five minutes.
            bool only_devices = !entries.empty() && std::chrono::steady_clock::now() - last_full_check < full_check_interval;
            std::vector<std::string> named;
            for (const auto& e : entries) {
                if (e.action.starts_with("device-") && !e.subject.empty())
                    named.push_back(e.subject);
                else
                    only_devices = false;
            }
            for (const auto& e : entries) {
                audited = e.id;
                if (state->reg_cache)
                    state->reg_cache->forget(e.subject);
                if (e.actor.starts_with("relay ")) // this relay's own REST changes, logged when made
                    continue;
                log_registry_change(*state->log, e);
            }
            if (only_devices) {
                std::sort(named.begin(), named.end());
                named.erase(std::unique(named.begin(), named.end()), named.end());
                for (const auto& id : named)
                    state->revalidate_devices(id);
            } else {
                state->revalidate_devices();
                last_full_check = std::chrono::steady_clock::now();
            }
            if (entries.size() == batch)
                continue; // more to read before the change counts as seen
            if (state->reg_cache)
                state->reg_cache->changes_applied(now);
            seen = now;
        } catch (const std::exception& e) {
            // The database went away between the notification and the reads: try again next tick.
            state->log->warn("event=RegistryUnavailable task=housekeeping reason=\"{}\"", e.what());
        }
    }
}

} // namespace

int run_relay(const relay_options& options)
{
    auto log = make_logger("relay", options.verbose);
    // Declared first so it is destroyed last: every socket the state still holds must go while
    // the io_context's services exist (destroying them later corrupted the heap at exit).
    io_pool pool(thread_count(options.threads));
    auto& ioc = pool.main();
    auto state = std::make_shared<relay_state>();
    state->options = options;
    state->log = log;
    auto listen = parse_listen_address(options.listen);
    state->reg = open_registry(options.data_dir, options.registry);
    state->credentials = state->reg.get();
    if (is_postgres_url(options.registry) && options.registry_cache_ttl.count() > 0) {
        state->credential_cache = make_caching_registry(
            *state->reg, options.registry_cache_ttl,
            [log](std::string_view kind, std::string_view name, std::chrono::seconds age) {
                log->info("event=CredentialsFromCache {}={} ageS={} reason=\"registry database unavailable\"", kind, name,
                          age.count());
            });
        state->credentials = state->credential_cache.get();
        state->reg_cache = dynamic_cast<registry_cache_view*>(state->credential_cache.get());
    }
    state->hub_name = hub_name(*state->reg);

    // A cluster node dialled at its own address: its certificate and token scopes name that host too.
    const std::string own_host = public_url_host(options.public_url);
    std::filesystem::path cert, key;
    if (options.cert && options.key) {
        cert = *options.cert;
        key = *options.key;
    } else {
        // Issued before the port opens, so a client that sees the port finds ca.pem and server.pem in place.
        auto names = certificate_names(public_host_name(options.host_name, listen.host, listen.port ? listen.port : 443));
        if (!listen.is_wildcard())
            names.push_back(listen.host);
        if (!own_host.empty())
            names.push_back(own_host);
        auto files = ensure_certificates(options.data_dir, names);
        cert = files.certificate_chain;
        key = files.private_key;
    }
    state->tls = std::make_shared<asio::ssl::context>(make_server_tls_context(cert, key, options.min_tls, true));
    state->admission = std::make_shared<stream_admission>(options.streams);
    std::vector<ip_rule> rules;
    for (const auto& text : options.ip_filter)
        rules.push_back(parse_ip_rule(text));
    state->filter = ip_filter(std::move(rules));

    error_code ec;
    auto address = listen.host.empty() ? asio::ip::address_v6::any() : asio::ip::make_address(listen.host, ec);
    if (ec)
        throw config_error("--listen: \"" + listen.host + "\" is not an IP address");
    auto acceptors = bind_per_thread(pool, tcp::endpoint(address, listen.port), options.listen);
    auto& acceptor = *acceptors.front();
    auto port = acceptor.local_endpoint().port();
    // Recorded before the port opens: admin commands run right after see this relay's name.
    state->host_name = public_host_name(options.host_name, listen.host, port);
    state->reg->set_setting("host_name", state->host_name);
    state->stream_url_base = stream_url_base(options.public_url, state->host_name);
    for (std::size_t i = 0; i < pool.size(); ++i)
        state->lanes.push_back(pool.context(i).get_executor());
    // Cluster mode: joined before the port opens, so the first device's presence is written.
    // The other nodes' devices are theirs to mark connected or not.
    if (!options.cluster_listen.empty())
        state->cluster = cluster_node::start(state, ioc, cert);
    else
        state->reg->mark_all_disconnected();
    for (auto& a : acceptors)
        a->listen(asio::socket_base::max_listen_connections);

    std::vector<std::string> names{"localhost", "127.0.0.1", "::1"};
    for (auto& n : certificate_names(state->host_name))
        names.push_back(n);
    if (!listen.is_wildcard())
        names.push_back(listen.host);
    if (!own_host.empty())
        names.push_back(own_host);
    state->auth = std::make_unique<authenticator>(*state->credentials, names, options.clock_skew);

    // MQTT over TLS for IoT Hub device code (mqtt.cpp); off unless --mqtt-listen names an address.
    tcp::acceptor mqtt_acceptor(ioc);
    if (!options.mqtt_listen.empty() && options.mqtt_listen != "off") {
        auto mqtt_listen = parse_listen_address(options.mqtt_listen);
        auto mqtt_address = mqtt_listen.host.empty() ? asio::ip::address_v6::any() : asio::ip::make_address(mqtt_listen.host, ec);
        if (ec)
            throw config_error("--mqtt-listen: \"" + mqtt_listen.host + "\" is not an IP address");
        tcp::endpoint mqtt_endpoint(mqtt_address, mqtt_listen.port);
        mqtt_acceptor.open(mqtt_endpoint.protocol());
        mqtt_acceptor.set_option(tcp::acceptor::reuse_address(true));
        mqtt_acceptor.bind(mqtt_endpoint, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + options.mqtt_listen + " (--mqtt-listen): " + ec.message());
        mqtt_acceptor.listen(asio::socket_base::max_listen_connections);
        asio::co_spawn(mqtt_acceptor.get_executor(), accept_loop(state, mqtt_acceptor, &pool, true), asio::detached);
        log->info("event=Listening endpoint=mqtt address={}", endpoint_text(mqtt_acceptor.local_endpoint()));
    }
    for (auto& a : acceptors)
        asio::co_spawn(a->get_executor(), accept_loop(state, *a, nullptr), asio::detached);
    asio::co_spawn(asio::make_strand(ioc), housekeeping(state), asio::detached);

    log->info("event=Listening address={} hostName={} hub={} dataDir={} registry=\"{}\"",
              endpoint_text(acceptor.local_endpoint()), state->host_name, state->hub_name, options.data_dir.string(),
              state->reg->describe());
    state->ready = true;
    auto admin_listener = start_admin_listener(ioc, state);

    graceful_stop stop;
    stop.drain_timeout = options.drain_timeout;
    stop.active = [state] { return static_cast<std::size_t>(state->active_streams.load()); };
    stop.begin = [state, &acceptors, &mqtt_acceptor, log](int signal) {
        log->info("event=ShuttingDown signal={} activeStreams={}", signal, state->active_streams.load());
        state->stopping = true;
        for (auto& a : acceptors)
            asio::post(a->get_executor(), [&a] {
                error_code ignored;
                a->close(ignored);
            });
        asio::post(mqtt_acceptor.get_executor(), [&mqtt_acceptor] {
            error_code ignored;
            mqtt_acceptor.close(ignored);
        });
        if (state->cluster)
            state->cluster->stop_accepting();
        std::vector<std::shared_ptr<control_channel>> channels;
        {
            std::lock_guard lock(state->devices_mutex);
            for (auto& [id, ch] : state->devices)
                channels.push_back(ch);
        }
        for (auto& ch : channels)
            ch->close(codes::relay_shutting_down, "relay is shutting down");
    };
    pool.run(std::move(stop), *log);
    if (state->cluster) {
        state->cluster->stop();
        state->cluster.reset(); // it holds the state: the cycle ends here
    } else {
        state->reg->mark_all_disconnected();
    }
    return 0;
}

} // namespace sg::relay
