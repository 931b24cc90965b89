#pragma once
// Shared state of a running relay; included by its network translation units only.
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>
#include <spdlog/logger.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http.hpp>
#include "common/control_link.hpp"
#include "common/protocol.hpp"
#include "common/websocket.hpp"
#include "relay/auth.hpp"
#include "relay/ip_filter.hpp"
#include "relay/limits.hpp"
#include "relay/metrics.hpp"
#include "relay/registry.hpp"
#include "relay/relay.hpp"
#include "relay/router.hpp"
#include "relay/x509_auth.hpp"

namespace sg::relay {

namespace http = beast::http;
using request_type = http::request<http::string_body>;

// A stream request waiting for the device's answer. The device's control channel delivers it
// from its own strand; the waiting HTTP session wakes on its strand.
struct pending_answer {
    explicit pending_answer(asio::any_io_executor ex) : timer(std::make_shared<asio::steady_timer>(ex)) {}
    void deliver(std::optional<protocol::stream_response_message> answer); // nullopt: device went away

    std::shared_ptr<asio::steady_timer> timer;
    std::mutex mutex;
    bool done = false;
    std::optional<protocol::stream_response_message> answer;
};

// The relay's end of one device's control connection, whichever protocol the device speaks: the
// device map, stream creation and revocation see only this. Requests waiting for an answer live
// here; a protocol delivers the device's answers and says how a request and a close go out.
class control_channel : public std::enable_shared_from_this<control_channel> {
public:
    control_channel(std::string device_id, std::string credential, const char* protocol);
    virtual ~control_channel() = default;
    const std::string& device_id() const { return device_id_; }
    const std::string& credential() const { return credential_; }
    const char* protocol() const { return protocol_; } // "websocket" or "mqtt", for logs
    const std::chrono::system_clock::time_point connected_at = std::chrono::system_clock::now();
    // Cluster mode: a newer connection on another node replaced this one (that node now says
    // whether the device is connected).
    std::atomic<bool> displaced{false};
    // Thread-safe, like everything here.
    void send_request(const protocol::stream_request_message& m, std::shared_ptr<pending_answer> waiter);
    void forget_request(const std::string& request_id);
    // Ends the connection with an error code the device can see (as far as its protocol can say it).
    virtual void close(int code, std::string_view message) = 0;
    // The connection is over (or never opened): requests still waiting get "device went away".
    void end();
    bool ended();
    // The device answered "accept" in its join on a kept connection (bridge.cpp); false when
    // nothing waits for that answer any more.
    bool accept_by_join(const std::string& request_id)
    {
        return deliver(protocol::stream_response_message{request_id, true, {}});
    }

protected:
    // Puts the request on the wire (queued behind what is being written).
    virtual void transmit(const protocol::stream_request_message& m) = 0;
    // The device answered: wakes the request's waiter; false when none waits (late or unknown id).
    bool deliver(protocol::stream_response_message answer);

private:
    std::string device_id_;
    std::string credential_; // which key/certificate authorized it (a digest), to notice renewals
    const char* protocol_;
    std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<pending_answer>> pending_;
    bool closed_ = false;
};

// The control WebSocket (GET /devices/{id}/streams): JSON messages on a control_link.
class ws_control_channel final : public control_channel {
public:
    ws_control_channel(std::string device_id, std::string credential, std::shared_ptr<wss_stream> ws);
    void close(int code, std::string_view message) override;
    asio::awaitable<error_code> run(spdlog::logger& log);

private:
    void transmit(const protocol::stream_request_message& m) override;
    void on_message(std::string_view text, spdlog::logger& log);
    std::shared_ptr<control_link> link_;
};

enum class stream_side { service, device };

// A stream between the service's POST and both sides joining the streaming endpoint.
struct pending_stream {
    std::string stream_id, device_id, stream_name;
    std::string service_token, device_token;
    bool service_joined = false, device_joined = false;
    std::chrono::steady_clock::time_point requested_at, expires_at;
    // The side that joined first waits here for the other.
    std::shared_ptr<wss_stream> waiting;
    stream_side waiting_side = stream_side::service;
    std::shared_ptr<asio::steady_timer> waiting_timer;
    bool waiting_kept = false;    // the waiting side's connection is kept for a next stream after this one
    bool waiting_on_kept = false; // it joined on a connection kept from an earlier stream
    std::string waiting_peer;
    // Where the stream runs: the POST's thread (its lane), else (a cluster node's stream) the side
    // that claimed its token first. A side's new connection moves there, so both connections of
    // the stream share one thread; a kept connection cannot move, and proxies pick one of this lane.
    asio::any_io_executor home;
    int lane = -1;
    // The request the device answers, which it may do in its join (accept_by_join).
    std::weak_ptr<control_channel> channel;
    std::string request_id;
    std::shared_ptr<stream_slot> slot; // the stream's place under the limits, released with it
    // Why the stream can no longer pair, once it cannot (the device left before joining, or its
    // request was rejected, timed out or lost after one side joined early): the waiting side is
    // closed with it at once instead of at the deadline.
    failure abandoned;

    // Both under the relay's streams_mutex. The waiting side (if any) looks at the stream again:
    void wake_waiting_side();
    // the stream can no longer pair, and a side waiting or about to wait is closed with why.
    void abandon(failure why);
};

class cluster_node;        // cluster.hpp
class registry_cache_view; // registry_cache.hpp

// What a stream request asks of the device's node, wherever it arrived.
struct stream_offer {
    std::string device_id, stream_name;
    std::chrono::seconds connect_timeout{60}, response_timeout{60};
};

struct relay_state {
    relay_options options;
    std::string host_name;    // as in connection strings, with :port unless 443
    std::string hub_name;
    std::unique_ptr<registry> reg;
    // Credential look-ups (the authenticator, a stream's device check): reg itself, or with
    // PostgreSQL its cache (--registry-cache-ttl), reg_cache then its view.
    registry* credentials = nullptr;
    std::unique_ptr<registry> credential_cache;
    registry_cache_view* reg_cache = nullptr;
    std::unique_ptr<authenticator> auth;
    device_ca_store device_cas; // what client certificates of CA-authenticated devices must chain to
    std::shared_ptr<asio::ssl::context> tls;
    std::shared_ptr<spdlog::logger> log;
    std::atomic<bool> stopping{false};
    std::shared_ptr<stream_admission> admission;
    ip_filter filter;

    std::mutex devices_mutex;
    std::unordered_map<std::string, std::shared_ptr<control_channel>> devices;

    std::mutex streams_mutex;
    std::unordered_map<std::string, std::shared_ptr<pending_stream>> streams;
    std::atomic<std::uint64_t> active_streams{0};
    relay_metrics metrics;
    std::atomic<bool> ready{false}; // registry open and the main listener accepting
    std::string stream_url_base;    // wss://host:port that streaming URLs name (--public-url)
    std::shared_ptr<cluster_node> cluster; // cluster mode (--cluster-listen), else null
    // The threads connections run on (one io_context each); a lane is an index here.
    std::vector<asio::any_io_executor> lanes;
    int lane_of(const asio::any_io_executor& ex) const;
    // Whether a stream's connection is kept for the proxy's next join after a clean end (not in
    // cluster mode: a connection forwarded to another node carries only that node's streams).
    bool keeps_stream_connections() const { return !cluster && options.keep_stream_connections; }

    std::shared_ptr<control_channel> find_device(const std::string& id);
    void expire_streams(); // drops streams nobody joined in time
    // The device's control connection ended: streams it accepted but never joined are given up now.
    void abandon_device_streams(const std::string& device_id);
    // The stream will not pair (its request failed): forgotten, and a side already joined is closed with why.
    void drop_stream(pending_stream& s, failure why);
    // Closes control connections whose device was deleted or disabled, or whose key or
    // certificate is no longer registered (all of them when device_id is empty).
    void revalidate_devices(const std::string& device_id = {});

    // The steps every device connection takes, whatever its protocol (control.cpp):
    // refused (429001) when a new device would exceed --max-devices;
    failure admit_device(const std::string& device_id, const std::string& peer);
    // routable from now on; returns the connection it replaces (closed by device_online);
    std::shared_ptr<control_channel> attach_device(const std::shared_ptr<control_channel>& channel);
    // the device knows it is connected: Connected in the registry, counted, logged;
    void device_online(const std::shared_ptr<control_channel>& channel, std::shared_ptr<control_channel> replaced,
                       const std::string& peer);
    // the connection ended (or never opened): Disconnected unless a newer one replaced it, its
    // waiting requests and unjoined streams given up. `online`: device_online ran.
    void device_offline(const std::shared_ptr<control_channel>& channel, const std::string& peer, bool online,
                        std::string_view reason);
    // a connection that never opened gives the device back the one it would have replaced.
    void restore_device(const std::shared_ptr<control_channel>& failed, std::shared_ptr<control_channel> replaced);
};

// Entry points of the translation units.
asio::awaitable<void> serve_connection(std::shared_ptr<relay_state> state, tcp::socket socket);
asio::awaitable<void> serve_control(std::shared_ptr<relay_state> state, tls_stream stream, request_type req,
                                    route r, std::string peer);
// MQTT: a TLS connection on --mqtt-listen, or a WebSocket upgrade of /$iothub/websocket (mqtt.cpp).
asio::awaitable<void> serve_mqtt(std::shared_ptr<relay_state> state, tcp::socket socket, std::string peer);
asio::awaitable<void> serve_mqtt_websocket(std::shared_ptr<relay_state> state, tls_stream stream, request_type req,
                                           std::string peer);
asio::awaitable<void> serve_bridge(std::shared_ptr<relay_state> state, tls_stream stream, request_type req, route r,
                                   std::string peer);
asio::awaitable<http::response<http::string_body>> open_stream(std::shared_ptr<relay_state> state,
                                                               const request_type& req, const route& r,
                                                               const std::string& peer);

// The device's side of a stream request, on the node that holds its control connection: admission,
// the pending stream, the request to the device and its answer as the POST's response.
asio::awaitable<http::response<http::string_body>> offer_stream(std::shared_ptr<relay_state> state,
                                                                const request_type& req, stream_offer offer,
                                                                std::shared_ptr<control_channel> channel);

http::response<http::string_body> error_response(const request_type& req, int code, std::string_view message);

// What a client is told with 503002 (the log line beside it names the database).
inline constexpr std::string_view registry_unavailable_message =
    "the relay's registry database is unavailable; try again later";

} // namespace sg::relay
