// Cluster mode: presence and the node's lease (the cluster thread), the cluster listener (a
// node asked to offer a stream to a device it holds) and its client (asking a device's home).
// See cluster.hpp and docs/CLUSTER.md.
#include "relay/cluster.hpp"

#include <unistd.h>

#include <charconv>
#include <cstdlib>

#include <condition_variable>
#include <deque>
#include <functional>
#include <thread>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/strand.hpp>
#include <boost/json.hpp>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include "common/client.hpp"
#include "common/config.hpp"
#include "common/crypto.hpp"
#include "common/pump.hpp"
#include "common/tls.hpp"
#include "relay/cluster_store.hpp"
#include "relay/data_dir.hpp"

namespace sg::relay {

namespace {

namespace json = boost::json;

constexpr std::string_view streams_target = "/cluster/v1/streams";
constexpr std::string_view auth_scheme = "StreamgateCluster ";
constexpr std::string_view signature_field = "x-streamgate-signature";
constexpr std::int64_t max_clock_difference = 30; // seconds between a request's time and ours
constexpr std::size_t max_cluster_body = 16 * 1024;
// A node's connection waits this long for its next stream request (its client keeps it 10 s).
constexpr auto keep_alive_idle = std::chrono::seconds(15);

std::int64_t unix_now() { return static_cast<std::int64_t>(std::time(nullptr)); }

std::string endpoint_text(const tcp::endpoint& ep)
{
    auto a = ep.address();
    return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(ep.port());
}

// SHA-256 of the DER of a certificate, hex upper case: what nodes pin each other's listeners by.
std::string certificate_digest(X509* cert)
{
    unsigned char* der = nullptr;
    int n = i2d_X509(cert, &der);
    if (n <= 0)
        return {};
    std::string digest = hex_upper(sha256(std::string_view(reinterpret_cast<char*>(der), static_cast<std::size_t>(n))));
    OPENSSL_free(der);
    return digest;
}

std::string certificate_file_digest(const std::filesystem::path& chain)
{
    FILE* f = std::fopen(chain.c_str(), "r");
    if (!f)
        throw std::runtime_error("cluster: cannot read " + chain.string());
    X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    if (!cert)
        throw std::runtime_error("cluster: no certificate in " + chain.string());
    auto digest = certificate_digest(cert);
    X509_free(cert);
    return digest;
}

// What a cluster request's signature covers: the sender, the receiver, the time and the request.
std::string string_to_sign(std::string_view method, std::string_view target, std::string_view from,
                           std::string_view to, std::string_view time, std::string_view body)
{
    std::string s;
    for (auto part : {method, target, from, to, time})
        s.append(part).push_back('\n');
    s += hex_upper(sha256(body));
    return s;
}

std::string sign(const std::string& key, const std::string& text) { return base64_encode(hmac_sha256(key, text)); }

struct local_claim {
    std::weak_ptr<control_channel> channel;
    std::int64_t number = 0; // 0 while the claim is being written
};

class cluster_impl final : public cluster_node, public std::enable_shared_from_this<cluster_impl> {
public:
    cluster_impl(std::shared_ptr<relay_state> state, asio::io_context& ioc)
        : state_(state), log_(state->log), acceptor_(ioc),
          client_tls_(make_client_tls_context(std::nullopt, state->options.min_tls))
    {
        // The home's certificate is pinned by its digest (published in cluster_nodes), not
        // checked against a CA: each node may have its own embedded CA.
        client_tls_.set_verify_mode(asio::ssl::verify_none);
    }

    void begin(const std::filesystem::path& certificate_chain)
    {
        const auto& o = state_->options;
        self_.node_id = o.node_id;
        if (self_.node_id.empty()) {
            char host[256] = {};
            ::gethostname(host, sizeof host - 1);
            self_.node_id = host;
        }
        if (!valid_node_id(self_.node_id))
            throw config_error("--node-id: \"" + self_.node_id + "\" is not 1-64 of A-Z a-z 0-9 . _ -");
        if (!is_postgres_url(o.registry))
            throw config_error("--cluster-listen needs a shared PostgreSQL registry (--registry postgresql://...)");
        lease_ = o.cluster_lease;
        self_.epoch = to_lower(hex_upper(random_bytes(8)));
        self_.public_url = state_->stream_url_base;
        self_.certificate_sha256 = certificate_file_digest(certificate_chain);

        auto listen = parse_listen_address(o.cluster_listen);
        error_code ec;
        auto address = listen.host.empty() ? asio::ip::address_v6::any() : asio::ip::make_address(listen.host, ec);
        if (ec)
            throw config_error("--cluster-listen: \"" + listen.host + "\" is not an IP address");
        tcp::endpoint endpoint(address, listen.port);
        acceptor_.open(endpoint.protocol());
        acceptor_.set_option(tcp::acceptor::reuse_address(true));
        acceptor_.bind(endpoint, ec);
        if (ec)
            throw std::runtime_error("cannot listen on " + o.cluster_listen + " (--cluster-listen): " + ec.message());
        auto port = acceptor_.local_endpoint().port();
        // Other nodes dial this: a wildcard listener is reached by the public URL's host.
        std::string host = listen.host;
        if (listen.is_wildcard())
            host = public_url_host(state_->stream_url_base);
        self_.cluster_address = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);

        store_ = std::make_unique<cluster_store>(o.registry);
        secret_ = base64_decode(store_->shared_secret()).value_or("");
        if (secret_.size() < 16)
            throw std::runtime_error("cluster: the shared secret in the registry is not valid base64");
        auto sent = std::chrono::steady_clock::now();
        if (!store_->join(self_, lease_))
            throw std::runtime_error("cluster: another relay is node " + self_.node_id +
                                     " and its lease has not lapsed (give each relay its own --node-id)");
        lease_deadline_ = (sent + lease_).time_since_epoch().count();
        std::vector<presence_claim> ignored;
        store_->poll_claims(ignored); // LISTEN before any device connects

        acceptor_.listen(asio::socket_base::max_listen_connections);
        asio::co_spawn(acceptor_.get_executor(), accept_loop(shared_from_this()), asio::detached);
        thread_ = std::thread([self = shared_from_this()] { self->run_thread(); });
        log_->info("event=ClusterJoined node={} epoch={} clusterAddress={} publicUrl={} leaseMs={}", self_.node_id,
                   self_.epoch, self_.cluster_address, self_.public_url, lease_.count());
    }

    const std::string& node_id() const override { return self_.node_id; }

    bool fenced() const override
    {
        return std::chrono::steady_clock::now().time_since_epoch().count() > lease_deadline_.load();
    }

    void device_online(const std::shared_ptr<control_channel>& channel) override
    {
        {
            std::lock_guard lock(claims_mutex_);
            claims_[channel->device_id()] = local_claim{channel, 0};
        }
        enqueue([this, weak = std::weak_ptr<control_channel>(channel), id = channel->device_id()] {
            auto number = store_->claim(id, self_.node_id, self_.epoch);
            settle_claim(id, weak, number);
        });
    }

    void device_offline(const std::shared_ptr<control_channel>& channel) override
    {
        const auto& id = channel->device_id();
        {
            std::lock_guard lock(claims_mutex_);
            auto it = claims_.find(id);
            if (it != claims_.end() && it->second.channel.lock() == channel)
                claims_.erase(it);
        }
        if (channel->displaced)
            return; // the row is the other node's now
        enqueue([this, id] { store_->release(id, self_.node_id, self_.epoch); });
    }

    asio::awaitable<http::response<http::string_body>> open_remote_stream(const request_type& req,
                                                                          stream_offer offer) override
    {
        std::optional<cluster_node_record> home;
        try {
            home = store_->find_home(offer.device_id);
        } catch (const registry_unavailable&) {
            database_errors_.fetch_add(1, std::memory_order_relaxed);
            throw; // 503002 by the caller
        }
        if (!home || home->node_id == self_.node_id) {
            log_->info("event=StreamRejected device={} stream={} result=404103 reason=\"no live relay holds the "
                       "device\"", offer.device_id, offer.stream_name);
            state_->metrics.stream_rejected(rejection::device_not_online);
            co_return error_response(req, codes::device_not_online, "device " + offer.device_id + " is not online");
        }
        sent_.fetch_add(1, std::memory_order_relaxed);
        auto res = co_await ask_home(req, offer, *home);
        co_return res;
    }

    std::uint64_t requests_sent() const override { return sent_.load(std::memory_order_relaxed); }
    std::uint64_t requests_received() const override { return received_.load(std::memory_order_relaxed); }
    std::vector<std::pair<std::string, std::string>> devices_by_node(std::size_t max) override
    {
        return store_->live_presence(max);
    }

    std::size_t devices_held() const override
    {
        std::lock_guard lock(claims_mutex_);
        return claims_.size();
    }
    double lease_age_seconds() const override
    {
        auto renewed = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(lease_deadline_.load())) - lease_;
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - renewed).count();
    }
    std::uint64_t database_errors() const override { return database_errors_.load(std::memory_order_relaxed); }

    std::uint64_t joins_forwarded() const override { return joins_forwarded_.load(std::memory_order_relaxed); }
    std::uint64_t joins_received() const override { return joins_received_.load(std::memory_order_relaxed); }

    asio::awaitable<void> forward_join(tls_stream stream, request_type req, std::string home_id,
                                       std::string peer) override
    {
        auto refuse = [&](int code, std::string why) -> asio::awaitable<void> {
            log_->warn("event=JoinForwardFailed peer={} home={} code={} reason=\"{}\"", peer, home_id, code, why);
            auto res = error_response(req, code, why);
            res.keep_alive(false);
            co_await http::async_write(stream, res, use_nothrow);
        };
        std::optional<cluster_node_record> home;
        bool registry_down = false;
        try {
            home = store_->find_node(home_id);
        } catch (const registry_unavailable& e) {
            database_errors_.fetch_add(1, std::memory_order_relaxed);
            log_->warn("event=RegistryUnavailable peer={} endpoint=bridge reason=\"{}\"", peer, e.what());
            registry_down = true;
        }
        if (registry_down) {
            co_await refuse(codes::registry_unavailable, std::string(registry_unavailable_message));
            co_return;
        }
        if (!home) {
            // Its streams went with it: the same answer as for any stream that is gone.
            co_await refuse(codes::unauthorized, "no such stream, or it expired (relay " + home_id + " is not live)");
            co_return;
        }
        auto [why, upstream] = co_await connect_to(*home, std::chrono::seconds(5));
        if (!upstream) {
            co_await refuse(codes::gateway_timeout, "the stream's relay " + home_id + " cannot be reached: " + why);
            co_return;
        }
        req.set("x-streamgate-peer", peer);
        sign_request(req, home->node_id, signature_field); // the side's Bearer token stays in Authorization
        upstream->expires_after(std::chrono::seconds(10));
        auto [wec, wn] = co_await http::async_write(*upstream, req, use_nothrow);
        if (wec) {
            co_await refuse(codes::gateway_timeout, "the stream's relay " + home_id + " did not take the join: " + wec.message());
            co_return;
        }
        // From here the bytes are the home's: its WebSocket answer, frames both ways, the closes.
        upstream->expires_never();
        joins_forwarded_.fetch_add(1, std::memory_order_relaxed);
        log_->info("event=JoinForwarded peer={} home={} target=\"{}\"", peer, home_id, std::string(req.target()));
        auto client = std::make_shared<tls_stream>(std::move(stream));
        auto result = co_await pump(tls_end(client), tls_end(upstream));
        log_->info("event=ForwardedJoinClosed peer={} home={} bytesToHome={} bytesFromHome={} result={}", peer, home_id,
                   result.bytes_a_to_b, result.bytes_b_to_a, result.error ? result.error.message() : "ok");
    }

    void stop_accepting() override
    {
        asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
            error_code ignored;
            self->acceptor_.close(ignored);
        });
    }

    void stop() override
    {
        {
            std::lock_guard lock(queue_mutex_);
            if (stopping_)
                return;
            stopping_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable())
            thread_.join();
        try {
            store_->leave(self_.node_id, self_.epoch);
            log_->info("event=ClusterLeft node={} epoch={}", self_.node_id, self_.epoch);
        } catch (const std::exception& e) {
            log_->warn("event=RegistryUnavailable task=clusterLeave reason=\"{}\"", e.what());
        }
    }

private:
    // ---- the cluster thread: presence writes, the lease, other nodes' claims ----

    void enqueue(std::function<void()> task)
    {
        {
            std::lock_guard lock(queue_mutex_);
            tasks_.push_back(std::move(task));
        }
        wake_.notify_one();
    }

    // The claim's outcome: its number, or (nullopt) a newer connection elsewhere already holds
    // the device, so this one is the older and goes.
    void settle_claim(const std::string& id, const std::weak_ptr<control_channel>& weak,
                      std::optional<std::int64_t> number)
    {
        auto channel = weak.lock();
        {
            std::lock_guard lock(claims_mutex_);
            auto it = claims_.find(id);
            if (!channel || it == claims_.end() || it->second.channel.lock() != channel)
                return; // that connection is already gone or replaced here
            if (number) {
                it->second.number = *number;
                return;
            }
            claims_.erase(it);
        }
        displace(channel, "another relay");
    }

    void displace(const std::shared_ptr<control_channel>& channel, const std::string& where)
    {
        channel->displaced = true;
        log_->info("event=DeviceReplaced device={} reason=\"a newer control connection on {} replaced this one\"",
                   channel->device_id(), where);
        channel->close(codes::connection_replaced, "a newer connection for this device replaced this one");
    }

    // Another node's claim: the connection here goes when that claim is newer than ours. A claim
    // of ours still being written is newer than anything announced before it (one sequence).
    void on_claim(const presence_claim& c)
    {
        if (c.node_id == self_.node_id && c.epoch == self_.epoch)
            return;
        std::shared_ptr<control_channel> channel;
        {
            std::lock_guard lock(claims_mutex_);
            auto it = claims_.find(c.device_id);
            if (it == claims_.end() || it->second.number == 0 || it->second.number > c.claim)
                return;
            channel = it->second.channel.lock();
            claims_.erase(it);
        }
        if (channel)
            displace(channel, "relay " + c.node_id);
    }

    // After writes failed or notifications were lost: claims every device held here again,
    // unless a live node took it meanwhile (then the connection here is the older one).
    void reclaim_all()
    {
        std::vector<std::pair<std::string, std::weak_ptr<control_channel>>> held;
        {
            std::lock_guard lock(claims_mutex_);
            for (auto& [id, c] : claims_)
                held.emplace_back(id, c.channel);
        }
        std::vector<std::string> ids;
        for (auto& [id, weak] : held) {
            settle_claim(id, weak, store_->reclaim(id, self_.node_id, self_.epoch));
            // Past a lapsed lease another node may have swept it Disconnected.
            if (restate_connections_ && !weak.expired())
                state_->reg->set_connection_state(id, true);
            ids.push_back(id);
        }
        restate_connections_ = false;
        store_->release_all_but(ids, self_.node_id, self_.epoch);
        log_->info("event=PresenceRepublished node={} devices={}", self_.node_id, held.size());
    }

    void renew_lease()
    {
        auto sent = std::chrono::steady_clock::now();
        bool ours = store_->renew(self_.node_id, self_.epoch, lease_);
        if (!ours) {
            // Our row is gone (deleted by hand, or the database lost its unlogged tables): join again.
            if (!store_->join(self_, lease_)) {
                if (!duplicate_logged_)
                    log_->error("event=Fenced node={} reason=\"another relay holds node id {} with a live lease\"",
                                self_.node_id, self_.node_id);
                duplicate_logged_ = true;
                return;
            }
            must_reclaim_ = restate_connections_ = true; // others may have swept them meanwhile
        }
        duplicate_logged_ = false;
        lease_deadline_ = (sent + lease_).time_since_epoch().count();
        if (fenced_logged_) {
            fenced_logged_ = false;
            must_reclaim_ = restate_connections_ = true;
            log_->info("event=Unfenced node={} reason=\"lease renewed\"", self_.node_id);
        }
        if (must_reclaim_) {
            reclaim_all(); // throws when the database went again: tried at the next renewal
            must_reclaim_ = false;
        }
    }

    // A node killed without leaving leaves its devices Connected in the registry: any live node
    // marks them Disconnected once no live node holds them. A device connected in the last two
    // leases (+5 s for the nodes' clocks) is left alone: its presence write may still be on its way.
    void sweep_dead_connections()
    {
        auto now = std::chrono::system_clock::now();
        auto grace = 2 * lease_ + std::chrono::seconds(5);
        int swept = store_->sweep_connection_state(
            utc_iso8601(now - std::chrono::duration_cast<std::chrono::system_clock::duration>(grace)), utc_iso8601(now));
        if (swept > 0)
            log_->info("event=ConnectionStateSwept node={} devices={} reason=\"no live relay holds them\"",
                       self_.node_id, swept);
    }

    void run_thread()
    {
        const auto heartbeat = std::max<std::chrono::milliseconds>(lease_ / 4, std::chrono::milliseconds(100));
        auto next_renew = std::chrono::steady_clock::now() + heartbeat;
        const auto sweep_interval = std::max<std::chrono::milliseconds>(lease_, std::chrono::seconds(1));
        auto next_sweep = std::chrono::steady_clock::now() + sweep_interval;
        auto last_failure = std::chrono::steady_clock::now(); // a start counts: the others may still be re-claiming
        std::string last_error;
        for (;;) {
            std::deque<std::function<void()>> batch;
            {
                std::unique_lock lock(queue_mutex_);
                wake_.wait_for(lock, std::chrono::milliseconds(50), [&] { return stopping_ || !tasks_.empty(); });
                if (stopping_)
                    return;
                batch.swap(tasks_);
            }
            try {
                // A failed write is not retried by itself: once the database answers again,
                // every claim is written anew (reclaim_all).
                while (!batch.empty()) {
                    auto task = std::move(batch.front());
                    batch.pop_front();
                    try {
                        task();
                    } catch (const std::exception&) {
                        must_reclaim_ = true;
                        throw;
                    }
                }
                if (std::chrono::steady_clock::now() >= next_renew) {
                    next_renew = std::chrono::steady_clock::now() + heartbeat;
                    renew_lease();
                }
                // Only after two quiet leases: after an outage every node re-claims its devices first.
                if (std::chrono::steady_clock::now() >= next_sweep && !fenced() &&
                    std::chrono::steady_clock::now() - last_failure > 2 * lease_) {
                    next_sweep = std::chrono::steady_clock::now() + sweep_interval;
                    sweep_dead_connections();
                }
                std::vector<presence_claim> claims;
                if (!store_->poll_claims(claims))
                    must_reclaim_ = true; // listening anew: what was announced meanwhile is lost
                for (auto& c : claims)
                    on_claim(c);
                if (!last_error.empty()) {
                    log_->info("event=ClusterRecovered node={}", self_.node_id);
                    last_error.clear();
                }
            } catch (const std::exception& e) {
                last_failure = std::chrono::steady_clock::now();
                database_errors_.fetch_add(1, std::memory_order_relaxed);
                if (last_error != e.what())
                    log_->warn("event=RegistryUnavailable task=cluster node={} reason=\"{}\"", self_.node_id, e.what());
                last_error = e.what();
                next_renew = std::chrono::steady_clock::now() + heartbeat;
            }
            if (fenced() && !fenced_logged_) {
                fenced_logged_ = true;
                log_->warn("event=Fenced node={} reason=\"lease not renewed for {} ms: no new streams until it is\"",
                           self_.node_id, lease_.count());
            }
        }
    }

    // ---- the client: asking a device's home ----

    // Connections to a home kept after an answer, for its next request: one TCP + TLS handshake
    // less per cross-node stream. Kept per node epoch (a restarted home is a new one) for at most
    // idle_link_lifetime, fewer than the home's keep-alive wait; at most max_idle_links each.
    static constexpr auto idle_link_lifetime = std::chrono::seconds(10);
    static constexpr std::size_t max_idle_links = 8;
    struct idle_link {
        std::shared_ptr<tls_stream> stream;
        std::chrono::steady_clock::time_point since;
    };
    static std::string link_key(const cluster_node_record& node) { return node.node_id + "/" + node.epoch; }

    asio::awaitable<std::shared_ptr<tls_stream>> take_idle_link(const cluster_node_record& node)
    {
        auto here = co_await asio::this_coro::executor;
        std::lock_guard lock(idle_mutex_);
        auto it = idle_links_.find(link_key(node));
        while (it != idle_links_.end() && !it->second.empty()) {
            idle_link link = std::move(it->second.back());
            it->second.pop_back();
            if (std::chrono::steady_clock::now() - link.since > idle_link_lifetime || !link.stream->idle_and_open())
                continue; // closed by the home, or too old to trust
            link.stream->rebind(here);
            co_return link.stream;
        }
        co_return nullptr;
    }

    void put_idle_link(const cluster_node_record& node, std::shared_ptr<tls_stream> stream)
    {
        stream->expires_never();
        std::lock_guard lock(idle_mutex_);
        auto& links = idle_links_[link_key(node)];
        auto now = std::chrono::steady_clock::now();
        std::erase_if(links, [&](const idle_link& l) { return now - l.since > idle_link_lifetime; });
        if (links.size() < max_idle_links)
            links.push_back(idle_link{std::move(stream), now});
    }

    // Who sends it, to whom, when, and the HMAC of all that with the request (docs/PROTOCOL.md).
    void sign_request(request_type& req, const std::string& to, std::string_view field) const
    {
        const std::string time = std::to_string(unix_now());
        req.set("x-streamgate-node", self_.node_id);
        req.set("x-streamgate-to", to);
        req.set("x-streamgate-time", time);
        req.set(field, std::string(auth_scheme) + sign(secret_, string_to_sign(req.method_string(), req.target(),
                                                                                self_.node_id, to, time, req.body())));
    }

    // A TLS connection to `node`'s cluster listener presenting the certificate it registered;
    // else null and why.
    asio::awaitable<std::tuple<std::string, std::shared_ptr<tls_stream>>> connect_to(const cluster_node_record& node,
                                                                                     std::chrono::seconds timeout)
    {
        using answer = std::tuple<std::string, std::shared_ptr<tls_stream>>;
        connection_string probe;
        probe.host_name = node.cluster_address;
        std::string host;
        std::uint16_t port = 0;
        try {
            host = probe.host();
            port = probe.port();
        } catch (const std::exception&) {
            co_return answer{"bad cluster address " + node.cluster_address, nullptr};
        }
        auto connected = co_await client::connect_tls(client_tls_, host, port, timeout);
        auto& cf = std::get<0>(connected);
        auto& stream = std::get<1>(connected);
        if (cf)
            co_return answer{cf.describe(), nullptr};
        X509* peer = SSL_get1_peer_certificate(stream->native_handle());
        std::string digest = peer ? certificate_digest(peer) : "";
        if (peer)
            X509_free(peer);
        if (digest.empty() || !constant_time_equal(digest, node.certificate_sha256))
            co_return answer{"its cluster listener presented another certificate than it registered", nullptr};
        co_return answer{std::string(), std::move(stream)};
    }

    asio::awaitable<http::response<http::string_body>> ask_home(const request_type& req, stream_offer offer,
                                                                cluster_node_record home)
    {
        // The home waits response_timeout for the device; a little more covers the hop.
        const auto budget = offer.response_timeout + std::chrono::seconds(5);
        const auto started = std::chrono::steady_clock::now();
        auto give_up = [&](std::string why) {
            log_->warn("event=StreamRejected device={} stream={} result=504101 home={} reason=\"{}\"", offer.device_id,
                       offer.stream_name, home.node_id, why);
            state_->metrics.stream_rejected(rejection::device_timeout);
            return error_response(req, codes::gateway_timeout,
                                  "the device's relay " + home.node_id + " did not answer in time");
        };
        auto stream = co_await take_idle_link(home);
        const bool reused = stream != nullptr;
        if (!stream) {
            auto [why, fresh] = co_await connect_to(home, std::min<std::chrono::seconds>(budget, std::chrono::seconds(5)));
            if (!fresh)
                co_return give_up(why);
            stream = std::move(fresh);
        }

        json::object body{{"deviceId", offer.device_id},
                          {"streamName", offer.stream_name},
                          {"connectTimeout", offer.connect_timeout.count()},
                          {"responseTimeout", offer.response_timeout.count()}};
        http::request<http::string_body> out{http::verb::post, std::string(streams_target), 11};
        out.set(http::field::host, home.cluster_address);
        out.set(http::field::content_type, "application/json");
        out.body() = json::serialize(body);
        sign_request(out, home.node_id, to_string(http::field::authorization));
        out.keep_alive(true); // the connection serves the next request to this home too
        out.prepare_payload();

        auto left = budget - std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
        stream->expires_after(std::max<std::chrono::steady_clock::duration>(left, std::chrono::seconds(1)));
        auto [wec, wn] = co_await http::async_write(*stream, out, use_nothrow);
        if (wec)
            co_return give_up("cannot send the request: " + wec.message());
        beast::flat_buffer buffer;
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 * 1024);
        auto [rec, rn] = co_await http::async_read(*stream, buffer, parser, use_nothrow);
        if (rec)
            co_return give_up(rec == beast::error::timeout ? "no answer in " + std::to_string(budget.count()) + "s"
                                                           : "no answer: " + rec.message());
        if (parser.get().keep_alive()) {
            put_idle_link(home, stream);
        } else {
            error_code ignored;
            beast::get_lowest_layer(*stream).socket().shutdown(tcp::socket::shutdown_both, ignored);
        }

        // The home's answer is the service's answer, as if the device were here.
        auto& answer = parser.get();
        http::response<http::string_body> res{answer.result(), req.version()};
        for (const auto& field : answer) {
            auto name = to_lower(field.name_string());
            if (name.starts_with("iothub-") || name == "content-type" || name == "retry-after")
                res.set(field.name_string(), field.value());
        }
        res.body() = answer.body();
        res.keep_alive(req.keep_alive() && answer.result_int() / 100 != 4);
        res.prepare_payload();
        log_->info("event=StreamForwarded device={} stream={} home={} status={} accepted={} connection={}",
                   offer.device_id, offer.stream_name, home.node_id, answer.result_int(),
                   std::string(answer["iothub-streaming-is-accepted"]), reused ? "kept" : "new");
        co_return res;
    }

    // ---- the listener: other nodes asking this one ----

    static asio::awaitable<void> accept_loop(std::shared_ptr<cluster_impl> self)
    {
        auto& acceptor = self->acceptor_;
        while (!self->state_->stopping) {
            auto accepted = co_await acceptor.async_accept(asio::make_strand(acceptor.get_executor()), use_nothrow);
            auto& ec = std::get<0>(accepted);
            auto& socket = std::get<1>(accepted);
            if (ec) {
                if (ec == asio::error::operation_aborted || self->state_->stopping)
                    co_return;
                self->log_->warn("cluster accept failed: {}", ec.message());
                asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(100));
                co_await pause.async_wait(use_nothrow);
                continue;
            }
            error_code pec;
            auto remote = socket.remote_endpoint(pec);
            std::string peer = pec ? "?" : endpoint_text(remote);
            if (!self->state_->filter.empty() && (pec || self->state_->filter.rejects(remote.address()))) {
                self->log_->warn("event=IpFiltered peer={} endpoint=cluster", peer);
                socket.close(pec);
                continue;
            }
            auto ex = socket.get_executor();
            asio::co_spawn(ex, serve(self, std::move(socket), std::move(peer)), asio::detached);
        }
    }

    // Who sent it, checked before anything else: the signature of a node that knows the secret.
    failure authenticate(const request_type& req, std::string& from) const
    {
        from = std::string(req["x-streamgate-node"]);
        auto time = std::string(req["x-streamgate-time"]);
        auto to = std::string(req["x-streamgate-to"]);
        // A forwarded join keeps its Authorization (the side's token): the signature has its own field.
        auto authorization = req.count(signature_field) ? req[signature_field] : req[http::field::authorization];
        if (!authorization.starts_with(auth_scheme) || from.empty() || time.empty())
            return {codes::unauthorized, "cluster requests must be signed by a node"};
        if (!valid_node_id(from) || to != self_.node_id)
            return {codes::unauthorized, "cluster request for another node"};
        std::int64_t t = 0;
        auto [p, ec] = std::from_chars(time.data(), time.data() + time.size(), t);
        if (ec != std::errc{} || p != time.data() + time.size() || std::llabs(unix_now() - t) > max_clock_difference)
            return {codes::unauthorized, "cluster request time is not within 30 s of this node's clock"};
        auto expected = sign(secret_, string_to_sign(std::string(req.method_string()), req.target(), from, to, time,
                                                     req.body()));
        if (!constant_time_equal(authorization.substr(auth_scheme.size()), expected))
            return {codes::unauthorized, "cluster request signature does not match"};
        return {};
    }

    asio::awaitable<http::response<http::string_body>> handle(const request_type& req, const std::string& from)
    {
        if (req.target() != streams_target)
            co_return error_response(req, codes::route_not_found, "no such cluster endpoint");
        if (req.method() != http::verb::post)
            co_return error_response(req, codes::method_not_allowed, "use POST");
        json::error_code jec;
        auto body = json::parse(req.body(), jec);
        const json::object* o = !jec && body.is_object() ? &body.as_object() : nullptr;
        auto text = [&](const char* key) -> std::string {
            const json::value* v = o ? o->if_contains(key) : nullptr;
            return v && v->is_string() ? std::string(v->as_string()) : std::string();
        };
        auto seconds = [&](const char* key) {
            const json::value* v = o ? o->if_contains(key) : nullptr;
            std::int64_t n = v && v->is_int64() ? v->as_int64() : 0;
            return std::chrono::seconds(n < 1 || n > 300 ? 60 : n);
        };
        stream_offer offer{text("deviceId"), text("streamName"), seconds("connectTimeout"), seconds("responseTimeout")};
        if (offer.device_id.empty() || offer.stream_name.empty())
            co_return error_response(req, codes::bad_request, "deviceId and streamName are required");
        if (fenced())
            co_return error_response(req, codes::relay_shutting_down, "relay " + self_.node_id + " has no valid lease");
        received_.fetch_add(1, std::memory_order_relaxed);
        auto channel = state_->find_device(offer.device_id);
        log_->info("event=ClusterStreamRequest from={} device={} stream={} here={}", from, offer.device_id,
                   offer.stream_name, channel != nullptr);
        auto res = co_await offer_stream(state_, req, std::move(offer), std::move(channel));
        co_return res;
    }

    static asio::awaitable<void> serve(std::shared_ptr<cluster_impl> self, tcp::socket socket, std::string peer)
    {
        auto& state = *self->state_;
        error_code ec;
        socket.set_option(tcp::no_delay(true), ec);
        tls_stream stream(std::move(socket), *state.tls);
        stream.expires_after(state.options.handshake_timeout);
        auto [hec] = co_await stream.async_handshake(asio::ssl::stream_base::server, use_nothrow);
        if (hec) {
            self->log_->info("event=HandshakeFailed endpoint=cluster peer={} reason=\"{}\"", peer, hec.message());
            co_return;
        }
        beast::flat_buffer buffer;
        // Stream requests of one node follow each other on its connection (keep-alive); a
        // forwarded join takes the connection over.
        for (bool first = true;; first = false) {
            http::request_parser<http::string_body> parser;
            parser.header_limit(static_cast<std::uint32_t>(state.options.max_header_bytes));
            parser.body_limit(max_cluster_body);
            if (!first)
                stream.expires_after(keep_alive_idle);
            auto [rec, rn] = co_await http::async_read(stream, buffer, parser, use_nothrow);
            if (rec) {
                bool idle_end = !first && (rec == http::error::end_of_stream || rec == beast::error::timeout ||
                                           rec == asio::error::eof || rec == asio::ssl::error::stream_truncated);
                if (!idle_end)
                    self->log_->info("event=BadRequest endpoint=cluster peer={} reason=\"{}\"", peer, rec.message());
                co_return;
            }
            request_type req = parser.release();
            std::string from;
            http::response<http::string_body> res;
            bool keep = req.keep_alive();
            if (auto f = self->authenticate(req, from)) {
                self->log_->warn("event=AuthFailed peer={} endpoint=cluster node=\"{}\" code={} reason=\"{}\"", peer,
                                 from.substr(0, 64), f.code, f.message);
                res = error_response(req, f.code, f.message);
                keep = false;
            } else if (route r = match_route(req.target()); r.kind == route_kind::bridge && websocket::is_upgrade(req)) {
                // A side of a stream created here, whose connection reached another node.
                self->joins_received_.fetch_add(1, std::memory_order_relaxed);
                stream.expires_never();
                std::string via = std::string(req["x-streamgate-peer"]).substr(0, 64) + " via " + from;
                co_await serve_bridge(self->state_, std::move(stream), std::move(req), std::move(r), std::move(via));
                co_return;
            } else {
                stream.expires_never(); // the offer has its own deadline (the device's answer)
                try {
                    res = co_await self->handle(req, from);
                } catch (const registry_unavailable& e) {
                    self->log_->warn("event=RegistryUnavailable peer={} endpoint=cluster reason=\"{}\"", peer, e.what());
                    res = error_response(req, codes::registry_unavailable, registry_unavailable_message);
                } catch (const std::exception& e) {
                    self->log_->error("event=InternalError peer={} endpoint=cluster reason=\"{}\"", peer, e.what());
                    res = error_response(req, codes::internal, "internal error");
                }
            }
            keep = keep && !self->state_->stopping;
            res.keep_alive(keep);
            stream.expires_after(std::chrono::seconds(30));
            auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
            if (wec)
                co_return;
            if (!keep)
                break;
        }
        stream.expires_after(std::chrono::seconds(5));
        co_await stream.async_shutdown(use_nothrow);
    }

    std::shared_ptr<relay_state> state_;
    std::shared_ptr<spdlog::logger> log_;
    tcp::acceptor acceptor_;
    asio::ssl::context client_tls_;
    cluster_node_record self_;
    std::chrono::milliseconds lease_{10000};
    std::string secret_;
    std::unique_ptr<cluster_store> store_; // used by the cluster thread, and find_home from any thread
    std::atomic<std::chrono::steady_clock::rep> lease_deadline_{0};
    std::atomic<std::uint64_t> sent_{0}, received_{0}, joins_forwarded_{0}, joins_received_{0}, database_errors_{0};

    std::mutex idle_mutex_;
    std::unordered_map<std::string, std::vector<idle_link>> idle_links_;

    mutable std::mutex claims_mutex_;
    std::unordered_map<std::string, local_claim> claims_; // device -> this node's connection

    std::mutex queue_mutex_;
    std::condition_variable wake_;
    std::deque<std::function<void()>> tasks_;
    bool stopping_ = false;
    std::thread thread_;
    // The cluster thread's own.
    bool must_reclaim_ = false, fenced_logged_ = false, duplicate_logged_ = false, restate_connections_ = false;
};

} // namespace

std::string stream_home(std::string_view stream_id)
{
    auto dot = stream_id.rfind('.');
    return dot == std::string_view::npos ? std::string() : std::string(stream_id.substr(0, dot));
}

std::shared_ptr<cluster_node> cluster_node::start(std::shared_ptr<relay_state> state, asio::io_context& ioc,
                                                  const std::filesystem::path& certificate_chain)
{
    auto node = std::make_shared<cluster_impl>(std::move(state), ioc);
    node->begin(certificate_chain);
    return node;
}

} // namespace sg::relay
