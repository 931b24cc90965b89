// Cluster mode (issue 10) and the shared registry, against a real PostgreSQL 15 and real relays:
// revocations made through one node (a renewed key, a disabled device) cut the device's control
// connection on the other within a second and refuse it on every node; the admin CLI and REST on
// different nodes agree on etags (412001 for a stale one); a database restart leaves a live
// cross-node stream intact while new streams fail with 503002 (503001 once fenced) and work again afterwards without
// restarting a relay; SSH and 16 MiB each way through a cross-node stream; and `migrate --to`
// from SQLite, with two nodes serving what it copied.
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <regex>
#include <thread>

#include "cluster_fixture.hpp"
#include "ssh_client.hpp"

using namespace sgit;

namespace {

constexpr std::size_t MiB = 1024 * 1024;

// A SAS token of `policy` for one node's REST endpoints (the scope names the node's host).
std::string registry_token(relay_fixture& node, const std::string& policy) {
    return sas_token("127.0.0.1:" + std::to_string(node.port()), policy_key(node, policy), policy, unix_now() + 600);
}

// A REST request on connection "c".
std::string rest(const std::string& label, const std::string& method, const std::string& path,
                 const std::string& token, const std::string& body = "", const std::vector<std::string>& extra = {}) {
    std::vector<std::string> headers = {"Authorization: " + token};
    headers.insert(headers.end(), extra.begin(), extra.end());
    return step({{"op", "request"}, {"label", label.c_str()}, {"conn", "c"}, {"method", method},
                 {"path", path}, {"headers", headers}, {"body", body}});
}

// Requests on one connection to `node`'s main port.
wire_result rest_script(relay_fixture& node, std::vector<std::string> requests) {
    requests.insert(requests.begin(), step({{"op", "connect"}, {"conn", "c"}}));
    return wire_script(node, requests);
}

const wire_event& response(const wire_result& w, const std::string& label, int status) {
    const wire_event& e = w.at(label);
    INFO("step " << label << ": " << e.line);
    INFO(w.describe());
    CHECK(e.event() == "response");
    CHECK(e.status() == status);
    return e;
}

// The etag in a device's JSON ("" when there is none).
std::string etag_of(const std::string& json) {
    static const std::regex etag(R"re("etag"\s*:\s*"([^"]*)")re");
    std::smatch m;
    return std::regex_search(json, m, etag) ? std::string(m[1]) : std::string();
}

// How long after `since` `p`'s log held `line` (nullopt if not within `timeout`).
std::optional<millis> logged_after(process& p, const std::string& line, steady::time_point since, millis timeout) {
    if (!wait_until([&] { return contains(p.stderr_text(), line); }, timeout, 10ms)) return std::nullopt;
    return std::chrono::duration_cast<millis>(steady::now() - since);
}

// A device proxy that gives up at the first refusal (exit 3), dialling only `relay`: REQUIREs the
// exit, returns its stderr.
std::string refused_device_proxy(relay_fixture& any, const std::string& name, const std::string& device_cs,
                                 const std::string& relay) {
    auto proxy = device_proxy(any, name, device_cs, free_port(), {relay}, {"--exit-on-auth-failure"});
    auto code = proxy->wait_exit(k_fail_timeout);
    INFO(proxy->describe());
    REQUIRE(code.has_value());
    CHECK(*code == 3);
    return proxy->stderr_text();
}

// One stream's bytes sent in pieces: a thread reads and hashes what comes back, so the test can
// send a piece, wait for its echo, change the world (stop the database) and send the next one.
class echo_pump {
public:
    explicit echo_pump(unique_fd fd) : fd_(std::move(fd)) {
        timeval rcv{0, 200 * 1000};  // the reader looks at its stop token this often
        timeval snd{1, 0};
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv);
        ::setsockopt(fd_.get(), SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd);
        reader_ = std::jthread([this](std::stop_token stop) { read_loop(stop); });
    }
    ~echo_pump() { stop(); }

    // Sends `n` random bytes and waits until everything sent so far came back: "" or what failed.
    std::string send_piece(std::size_t n, millis timeout = 20s) {
        const bytes data = random_bytes(n);
        sent_hash_.update(data.data(), data.size());
        const auto deadline = steady::now() + timeout;
        for (std::size_t off = 0; off < data.size();) {
            ssize_t w = ::send(fd_.get(), data.data() + off, std::min<std::size_t>(64 * 1024, data.size() - off),
                               MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) && steady::now() < deadline)
                continue;
            if (w <= 0) return std::string("send: ") + (w < 0 ? std::strerror(errno) : "0");
            off += static_cast<std::size_t>(w);
        }
        sent_ += n;
        if (!wait_until([&] { return received_.load() >= sent_ || ended_.load(); }, timeout))
            return "the echo of " + std::to_string(sent_) + " bytes did not come back (" +
                   std::to_string(received_.load()) + " did)";
        if (received_.load() != sent_)
            return "the stream ended after " + std::to_string(received_.load()) + " of " + std::to_string(sent_) +
                   " bytes: " + end_reason();
        return "";
    }
    std::size_t sent() const { return sent_; }
    std::size_t received() const { return received_.load(); }
    // Half-closes our side and waits for the far side's EOF: true when the stream ended cleanly.
    bool finish(millis timeout = 10s) {
        ::shutdown(fd_.get(), SHUT_WR);
        return wait_until([&] { return ended_.load(); }, timeout) && end_reason() == "EOF";
    }
    std::string end_reason() {
        std::lock_guard lock(mutex_);
        return end_reason_;
    }
    // Stops the reader: the digests of what was sent and what came back.
    std::pair<std::string, std::string> digests() {
        stop();
        return {sent_hash_.hex_digest(), received_hash_.hex_digest()};
    }

private:
    void stop() {
        if (reader_.joinable()) {
            reader_.request_stop();
            reader_.join();
        }
    }
    void read_loop(std::stop_token stop) {
        std::vector<unsigned char> buf(64 * 1024);
        while (!stop.stop_requested()) {
            ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
            if (n > 0) {
                received_hash_.update(buf.data(), static_cast<std::size_t>(n));
                received_ += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
            std::lock_guard lock(mutex_);
            end_reason_ = n == 0 ? "EOF" : std::string("recv: ") + std::strerror(errno);
            ended_ = true;
            return;
        }
    }

    unique_fd fd_;
    sha256 sent_hash_, received_hash_;
    std::size_t sent_ = 0;
    std::atomic<std::size_t> received_{0};
    std::atomic<bool> ended_{false};
    std::mutex mutex_;
    std::string end_reason_;
    std::jthread reader_;
};

// Handshake (the host key is the test sshd's) and key authentication.
std::unique_ptr<ssh_client> ssh_login(unique_fd sock, sshd_fixture& sshd) {
    auto ssh = std::make_unique<ssh_client>(std::move(sock));
    CHECK(ssh->host_key() == sshd.host_key_blob());
    ssh->authenticate(sshd.user(), sshd.user_public_key(), sshd.user_key());
    return ssh;
}

}  // namespace

TEST_CASE("cluster: a key renewed through n2 (admin CLI or REST) cuts the device's control connection on n1 within a second",
          "[integration][postgres][cluster]") {
    cluster c("10");
    echo_server target;
    const std::string cli_cs = c.n2.create_device("cr-renew-cli");
    const std::string rest_cs = c.n2.create_device("cr-renew-rest");
    auto proxy_cli = device_proxy(c.n1, "device-proxy-cli", cli_cs, target.port(), {c.relay_arg(c.n1)});
    auto proxy_rest = device_proxy(c.n1, "device-proxy-rest", rest_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cr-renew-cli", *proxy_cli));
    REQUIRE(c.n1.wait_device_connected("cr-renew-rest", *proxy_rest));
    REQUIRE(c.wait_home("cr-renew-cli", "n1"));
    REQUIRE(c.wait_home("cr-renew-rest", "n1"));
    const std::string token = registry_token(c.n2, "registryReadWrite");

    // The admin CLI on n2's machine (its data directory, the shared database).
    {
        const std::vector<std::string> args = {"device-identity", "update", "--device-id", "cr-renew-cli", "--renew-key",
                                               "primary"};
        run_result r = c.n2.admin(args);
        const auto renewed = steady::now();
        INFO(describe(args, r));
        REQUIRE(r.exit_code == 0);
        auto cut = logged_after(c.n1.relay(), "event=DeviceRevoked device=cr-renew-cli reason=\"device credentials were renewed\"",
                                renewed, 5s);
        INFO(tail(c.n1.relay().stderr_text(), 3000));
        REQUIRE(cut);
        INFO("cut " << cut->count() << " ms after the admin command exited");
        CHECK(*cut < 1500ms);
        INFO(proxy_cli->describe());
        CHECK(wait_until([&] {
            return contains(proxy_cli->stderr_text(), "401003 IoTHubUnauthorized: device credentials were renewed");
        }, 5s));
    }
    // REST on n2: a new primary key in a PUT.
    {
        const std::string new_key = base64_encode(random_bytes(32));
        wire_result w = rest_script(c.n2, {rest("renew", "PUT", "/devices/cr-renew-rest", token,
                                                R"({"authentication":{"symmetricKey":{"primaryKey":")" + new_key + "\"}}}",
                                                {"If-Match: \"*\""})});
        const auto renewed = steady::now();
        response(w, "renew", 200);
        auto cut = logged_after(c.n1.relay(), "event=DeviceRevoked device=cr-renew-rest reason=\"device credentials were renewed\"",
                                renewed, 5s);
        INFO(tail(c.n1.relay().stderr_text(), 3000));
        REQUIRE(cut);
        INFO("cut " << cut->count() << " ms after the REST answer");
        CHECK(*cut < 1500ms);
        INFO(proxy_rest->describe());
        CHECK(wait_until([&] {
            return contains(proxy_rest->stderr_text(), "401003 IoTHubUnauthorized: device credentials were renewed");
        }, 5s));
        // The new key is the device's key now, on every node.
        CHECK(cs_field(device_connection_string(c.n1, "cr-renew-rest"), "SharedAccessKey") == new_key);
    }
    // n2 held neither device: nothing to cut there. The old key is refused by both nodes (the
    // proxies keep trying n1 with it).
    CHECK_FALSE(contains(c.n2.relay().stderr_text(), "event=DeviceRevoked"));
    proxy_cli->kill(SIGKILL);
    proxy_rest->kill(SIGKILL);
    for (relay_fixture* node : {&c.n1, &c.n2}) {
        const std::string err = refused_device_proxy(c.n1, "device-proxy-old-key", cli_cs, c.relay_arg(*node));
        INFO(err);
        CHECK(contains(err, "401003 IoTHubUnauthorized: signature does not match the device's keys"));
        CHECK(contains(node->relay().stderr_text(),
                       "device=cr-renew-cli endpoint=control code=401003 reason=\"signature does not match the device's keys\""));
    }
    // The renewed connection string connects, here to n2, and streams come through n1.
    auto renewed = device_proxy(c.n2, "device-proxy-renewed", device_connection_string(c.n2, "cr-renew-cli"),
                                target.port(), {c.relay_arg(c.n2)});
    REQUIRE(c.wait_home("cr-renew-cli", "n2"));
    expect_echo(c.n1, c.service_cs(c.n1), "cr-renew-cli", 64 * 1024);
}

TEST_CASE("cluster: a device disabled through one node is cut on the other and refused by every node",
          "[integration][postgres][cluster]") {
    cluster c("10");
    echo_server target;
    const std::string device_cs = c.n2.create_device("cr-off");  // (admin commands name the last started node)
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cr-off", *proxy));
    REQUIRE(c.wait_home("cr-off", "n1"));

    admin_ok(c.n2, {"device-identity", "update", "--device-id", "cr-off", "--status", "disabled", "--status-reason",
                    "stolen"});
    const auto disabled = steady::now();
    auto cut = logged_after(c.n1.relay(), "event=DeviceRevoked device=cr-off reason=\"device was disabled\"", disabled, 5s);
    INFO(tail(c.n1.relay().stderr_text(), 3000));
    REQUIRE(cut);
    INFO("cut " << cut->count() << " ms after the admin command exited");
    CHECK(*cut < 1500ms);
    {
        INFO(proxy->describe());
        CHECK(wait_until([&] { return contains(proxy->stderr_text(), "401003 IoTHubUnauthorized: device was disabled"); }, 5s));
    }
    // The connection's presence row goes with it.
    CHECK(c.wait_home("cr-off", "", 5s));
    proxy->kill(SIGKILL);

    // Refused by both nodes with 401003, as a single relay refuses a disabled device.
    for (relay_fixture* node : {&c.n1, &c.n2}) {
        const std::string err = refused_device_proxy(c.n1, "device-proxy-disabled", device_cs, c.relay_arg(*node));
        INFO(err);
        CHECK(contains(err, "401003 IoTHubUnauthorized: device is disabled"));
        const std::string log = node->relay().stderr_text();
        INFO(tail(log, 3000));
        CHECK(std::regex_search(log, std::regex(R"(event=AuthFailed peer=\S+ device=cr-off endpoint=control code=401003 reason="device is disabled")")));
    }
    CHECK(c.home_of("cr-off").empty());
    CHECK(c.n2.connection_state("cr-off") == "Disconnected");
    // A service asking either node for a stream to it finds it offline.
    for (relay_fixture* front : {&c.n1, &c.n2}) {
        attempt a = echo_service(*front, c.service_cs(*front), "cr-off");
        INFO(describe({bin::echo_service}, a.r));
        CHECK(a.r.exit_code != 0);
        CHECK(contains(a.r.err, "404103"));
    }
}

TEST_CASE("cluster: admin CLI and REST writes on different nodes agree on etags, a stale one is 412001 on either",
          "[integration][postgres][cluster]") {
    cluster c("10");
    const std::string token2 = registry_token(c.n2, "registryReadWrite");
    const std::string token1 = registry_token(c.n1, "registryReadWrite");

    // Created with the admin CLI on n1, read through REST on n2: the same etag.
    // (Not relay_fixture::create_device: the connection string names the last started node, n2.)
    admin_ok(c.n1, {"device-identity", "create", "--device-id", "cr-etag"});
    const std::string e1 = etag_of(admin_ok(c.n1, {"device-identity", "show", "--device-id", "cr-etag"}));
    REQUIRE_FALSE(e1.empty());
    wire_result w = rest_script(c.n2, {
        rest("get", "GET", "/devices/cr-etag", token2),
        rest("update", "PUT", "/devices/cr-etag", token2, R"({"status":"disabled"})", {"If-Match: \"" + e1 + "\""}),
        rest("stale", "PUT", "/devices/cr-etag", token2, R"({"status":"enabled"})", {"If-Match: \"" + e1 + "\""}),
    });
    CHECK(response(w, "get", 200).get("j.etag") == e1);
    const std::string e2 = response(w, "update", 200).get("j.etag");
    CHECK_FALSE(e2.empty());
    CHECK(e2 != e1);
    CHECK(response(w, "stale", 412).error_code() == 412001);

    // n1 sees n2's write: its CLI shows the new etag and refuses the old one.
    {
        const std::string shown = admin_ok(c.n1, {"device-identity", "show", "--device-id", "cr-etag"});
        CHECK(etag_of(shown) == e2);
        CHECK(std::regex_search(shown, std::regex(R"re("status"\s*:\s*"disabled")re")));
        const std::vector<std::string> args = {"device-identity", "update", "--device-id", "cr-etag", "--status", "enabled",
                                               "--etag", e1};
        run_result r = c.n1.admin(args);
        INFO(describe(args, r));
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "412001"));
    }
    // REST on n1 with n2's etag works; REST on n2 with the one before is 412001 (update and delete).
    wire_result w1 = rest_script(c.n1, {
        rest("stale", "PUT", "/devices/cr-etag", token1, R"({"status":"enabled"})", {"If-Match: \"" + e1 + "\""}),
        rest("update", "PUT", "/devices/cr-etag", token1, R"({"status":"enabled"})", {"If-Match: \"" + e2 + "\""}),
    });
    CHECK(response(w1, "stale", 412).error_code() == 412001);
    const std::string e3 = response(w1, "update", 200).get("j.etag");
    CHECK(e3 != e2);
    // The admin CLI on n2 updates with the current etag; REST on n1 then deletes with that one only.
    const std::string after_cli = admin_ok(c.n2, {"device-identity", "update", "--device-id", "cr-etag",
                                                  "--status-reason", "checked", "--etag", e3});
    const std::string e4 = etag_of(after_cli);
    CHECK_FALSE(e4.empty());
    CHECK(e4 != e3);
    wire_result d = rest_script(c.n1, {
        rest("delete-stale", "DELETE", "/devices/cr-etag", token1, "", {"If-Match: \"" + e3 + "\""}),
        rest("delete", "DELETE", "/devices/cr-etag", token1, "", {"If-Match: \"" + e4 + "\""}),
    });
    CHECK(response(d, "delete-stale", 412).error_code() == 412001);
    response(d, "delete", 204);
    {
        run_result r = c.n2.admin({"device-identity", "show", "--device-id", "cr-etag"});
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "404001"));
    }
    // Both kinds of writers are in the one audit trail, and a node logs the other processes'
    // changes (admin commands) from it.
    CHECK(trim(c.pg.psql("cluster", "SELECT count(*) FROM audit WHERE subject = 'cr-etag' AND actor LIKE 'admin-cli%'")) == "2");
    CHECK(trim(c.pg.psql("cluster", "SELECT count(*) FROM audit WHERE subject = 'cr-etag' AND actor LIKE 'relay rest%'")) == "3");
    CHECK(wait_until([&] {
        return contains(c.n2.relay().stderr_text(), "op=device-create subject=cr-etag");
    }, 5s));
}

TEST_CASE("cluster: a database restart keeps a live cross-node stream's bytes, new streams get 503002 meanwhile and "
          "work again after it without a relay restart",
          "[integration][postgres][cluster]") {
    cluster c("4");  // a short lease: both nodes fence themselves while the database is down
    echo_server target;
    const std::string device_cs = c.n2.create_device("cr-db");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cr-db", *proxy));
    REQUIRE(c.wait_home("cr-db", "n1"));
    const pid_t pid1 = c.n1.relay().pid(), pid2 = c.n2.relay().pid();
    // Everything that needs the registry is read before the database goes.
    const std::string svc1 = c.service_cs(c.n1), svc2 = c.service_cs(c.n2);
    const std::string token1 = sas_token(relay_host(c.n1), cs_field(svc1, "SharedAccessKey"), "service", unix_now() + 600);
    const std::string admin1 = cluster::admin_address(c.n1), admin2 = cluster::admin_address(c.n2);
    REQUIRE(cluster::wait_ready(c.n1));
    REQUIRE(cluster::wait_ready(c.n2));

    // A stream asked of n2, carried by n1 (the device's node).
    auto [mine, theirs] = socket_pair();
    auto stream = spawn_stdio_service_proxy(c.n2, svc2, "cr-db", theirs.get());
    theirs.reset();
    echo_pump pump(std::move(mine));
    INFO(stream->describe());
    REQUIRE(pump.send_piece(2 * MiB) == "");

    // A new stream request: what either node answers while the database is away.
    auto new_stream = [&](relay_fixture& front, const std::string& label, long long code = 503002) {
        wire_result w = rest_script(front, {rest(label, "POST", "/twins/cr-db/streams/TestStream", token1)});
        const wire_event& e = response(w, label, 503);
        CHECK(e.error_code() == code);
        CHECK(e.get("j.message") == (code == 503002 ? "the relay's registry database is unavailable; try again later"
                                                    : "this relay cannot renew its cluster lease; try another relay or later"));
        CHECK(e.get("h.retry-after") == "5");
        CHECK_FALSE(contains(w.raw.out, std::to_string(c.pg.port())));  // the client learns nothing of the database
    };

    c.pg.stop("immediate");
    INFO(c.pg.log_tail(2000));
    CHECK(pump.send_piece(2 * MiB) == "");  // the stream does not need the database
    new_stream(c.n2, "down-n2");
    new_stream(c.n1, "down-n1");
    {
        attempt a = echo_service(c.n2, svc2, "cr-db");
        INFO(describe({bin::echo_service}, a.r));
        CHECK(a.r.exit_code != 0);
        CHECK(contains(a.r.err, "503002"));
        CHECK(a.took < 10s);
    }
    const std::string redacted = "reason=\"registry postgresql://streamgate:***@127.0.0.1:" + std::to_string(c.pg.port()) + "/cluster";
    CHECK(std::regex_search(c.n2.relay().stderr_text(), std::regex(R"(event=RegistryUnavailable peer=\S+ target=cr-db )")));
    CHECK(contains(c.n2.relay().stderr_text(), redacted));

    // Past their leases both nodes are fenced (/readyz 503 "fenced"); the stream goes on. n2 read
    // the service policy and the device before the outage (--registry-cache-ttl, 60 s): it
    // authorizes the request from its cache and the fence refuses it, 503001.
    CHECK(wait_until([&] {
        return contains(c.n1.relay().stderr_text(), "event=Fenced node=n1") &&
               contains(c.n2.relay().stderr_text(), "event=Fenced node=n2");
    }, 10s));
    for (const std::string& admin : {admin1, admin2}) {
        const http_answer ready = http_get(admin, "/readyz");
        CHECK(ready.status == 503);
        CHECK(ready.body == "fenced\n");
    }
    CHECK(pump.send_piece(2 * MiB) == "");
    new_stream(c.n2, "fenced-n2", 503001);
    CHECK(contains(c.n2.relay().stderr_text(), "event=CredentialsFromCache policy=service"));
    CHECK(contains(c.n2.relay().stderr_text(), "event=CredentialsFromCache device=cr-db"));
    CHECK(contains(c.n2.relay().stderr_text(), "result=503001"));

    c.pg.start();
    const auto back = steady::now();
    // Both nodes renew, re-join (the crash emptied the unlogged lease and presence tables) and n1
    // claims its device again: ready, without a restart.
    CHECK(cluster::wait_ready(c.n1));
    CHECK(cluster::wait_ready(c.n2));
    CHECK(c.wait_home("cr-db", "n1", 20s));
    INFO("ready and home again " << std::chrono::duration_cast<millis>(steady::now() - back).count() << " ms after the start");
    CHECK(pump.send_piece(2 * MiB) == "");
    CHECK(pump.finish());
    const auto [sent, received] = pump.digests();
    CHECK(pump.sent() == 8 * MiB);
    CHECK(pump.received() == 8 * MiB);
    CHECK(received == sent);
    // n1 carried it (and counted 8 MiB each way): the one stream, from before the restart to after it.
    CHECK(wait_until([&] {
        return std::regex_search(c.n1.relay().stderr_text(),
                                 std::regex(R"(event=StreamClosed device=cr-db stream=TestStream streamId=\S+ )"
                                            R"(bytesToDevice=8388608 bytesToService=8388608 durationS=\S+ result=ok)"));
    }, 5s));

    // New streams work again, asked of either node.
    expect_echo(c.n2, svc2, "cr-db", 1 * MiB);
    expect_echo(c.n1, svc1, "cr-db", 256 * 1024);
    CHECK(c.n1.relay().pid() == pid1);
    CHECK(c.n2.relay().pid() == pid2);
    CHECK(c.n1.relay().running());
    CHECK(c.n2.relay().running());
    CHECK(proxy->running());
    CHECK_FALSE(contains(proxy->stderr_text(), "400027"));
    CHECK_FALSE(contains(c.n1.relay().stderr_text() + c.n2.relay().stderr_text(), c.pg.password()));
}

TEST_CASE("cluster: SSH to a device on n1 through a service proxy on n2", "[integration][postgres][cluster][ssh]") {
    cluster c("10");
    sshd_fixture sshd;
    const std::string device_cs = c.n2.create_device("cr-ssh");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, sshd.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cr-ssh", *proxy));
    REQUIRE(c.wait_home("cr-ssh", "n1"));
    const int port = free_port();
    auto service = c.n2.spawn("service-proxy", {bin::service_proxy, "--ca-file", c.n2.ca_file().string(),
                                                c.service_cs(c.n2), "cr-ssh", std::to_string(port)});
    {
        bool up = wait_until([&] { return !service->running() || port_listening(port); }, k_start_timeout);
        INFO(service->describe());
        REQUIRE(up);
        REQUIRE(service->running());
    }

    auto ssh = ssh_login(connect_tcp(port), sshd);
    const std::string word = "cluster-" + sha256_hex(random_bytes(8)).substr(0, 12);
    {
        exec_result r = ssh->exec("echo " + word + "; whoami");
        INFO("stderr: " << r.err);
        CHECK(r.exit_status == 0);
        CHECK(r.out == word + "\n" + sshd.user() + "\n");
    }
    {
        const bytes upload = random_bytes(2 * MiB);
        exec_result r = ssh->exec("sha256sum", upload);
        INFO("stderr: " << r.err);
        CHECK(r.exit_status == 0);
        CHECK(r.out.rfind(sha256_hex(upload) + " ", 0) == 0);
    }
    // n2 asked n1; the session's bytes went through n1 only.
    const std::string log1 = c.n1.relay().stderr_text(), log2 = c.n2.relay().stderr_text();
    INFO(tail(log2, 3000));
    CHECK(contains(log2, "event=StreamForwarded device=cr-ssh"));
    CHECK(contains(log1, "event=ClusterStreamRequest from=n2 device=cr-ssh"));
    CHECK(contains(log1, "event=StreamEstablished device=cr-ssh"));
    CHECK_FALSE(contains(log2, "event=StreamEstablished"));
}

TEST_CASE("cluster: 16 MiB each way through a stream asked of n2 for a device on n1", "[integration][postgres][cluster]") {
    cluster c("10");
    echo_server target;
    const std::string device_cs = c.n2.create_device("cr-bulk");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cr-bulk", *proxy));
    REQUIRE(c.wait_home("cr-bulk", "n1"));
    expect_echo(c.n2, c.service_cs(c.n2), "cr-bulk", 16 * MiB);
    CHECK(target.connections_accepted() == 1);
    CHECK(contains(c.n2.relay().stderr_text(), "event=StreamForwarded device=cr-bulk"));
    CHECK_FALSE(contains(c.n2.relay().stderr_text(), "event=StreamEstablished"));
    // n1 counted every byte each way.
    const std::regex closed(R"(event=StreamClosed device=cr-bulk stream=\S+ streamId=\S+ bytesToDevice=(\d+) bytesToService=(\d+) )");
    std::smatch m;
    std::string log1;
    CHECK(wait_until([&] {
        log1 = c.n1.relay().stderr_text();
        return std::regex_search(log1, m, closed);
    }, 5s));
    INFO(tail(log1, 2000));
    REQUIRE(m.size() == 3);
    CHECK(std::stoull(m[1]) == 16 * MiB);
    CHECK(std::stoull(m[2]) == 16 * MiB);
}

namespace {

// A SQLite registry with what `migrate` must carry: SAS devices (one with renewed keys, one
// disabled), a device authenticated by an uploaded CA, and the audit trail of all that; then the
// copy into a fresh PostgreSQL database and two cluster nodes on it: n1 on the SQLite relay's
// data directory (its certificates), n2 on a data directory of its own.
struct migrated_cluster {
    migrated_cluster() {
        const auto& dir = old.dir().path();
        sas_cs = old.create_device("mg-sas");
        old.create_device("mg-renewed");
        admin_ok(old, {"device-identity", "update", "--device-id", "mg-renewed", "--renew-key", "both"});
        off_cs = old.create_device("mg-off");
        admin_ok(old, {"device-identity", "update", "--device-id", "mg-off", "--status", "disabled", "--status-reason",
                       "retired"});
        ca = make_self_signed(dir, "mg-ca", "Streamgate Migrate CA", true);
        leaf = make_issued(dir, "mg-ca-dev", "mg-ca-dev", ca);
        admin_ok(old, {"certificate", "add", "--name", "mg-ca", "--path", ca.cert.string()});
        ca_cs = admin_ok(old, {"device-identity", "create", "--device-id", "mg-ca-dev", "--auth-method", "x509_ca"});
        service_cs = old.service_connection_string();
        devices_before = admin_ok(old, {"device-identity", "list"});
        for (const char* policy : {"iothubowner", "service", "device", "registryRead", "registryReadWrite"})
            for (const char* type : {"primary", "secondary"})
                policy_keys_before.push_back(policy_key(old, policy, type));
        REQUIRE(old.stop(SIGTERM) == 0);
        audit_before = sqlite_rows(audit_sql);

        url = pg.create_database("migrated");
        migrate = old.admin({"migrate", "--to", url});
        INFO(migrate.out << migrate.err);
        REQUIRE(migrate.exit_code == 0);

        n1 = old.spawn("relay-n1", {bin::relay, "--data-dir", old.data_dir().string(), "--listen",
                                    "127.0.0.1:" + std::to_string(old.port()), "--node-id", "n1", "--registry", url,
                                    "--cluster-listen", "127.0.0.1:0", "--cluster-lease", "10", "--admin-listen",
                                    "127.0.0.1:0"});
        bool up = wait_until([&] { return !n1->running() || port_listening_in(n1->pid(), old.port()); }, k_start_timeout);
        INFO(n1->describe());
        REQUIRE(up);
        REQUIRE(n1->running());
        REQUIRE(wait_until([&] { return contains(n1->stderr_text(), "event=ClusterJoined node=n1 "); }, k_start_timeout));
        n2 = std::make_unique<relay_fixture>(relay_config{
            .args = {"--registry", url, "--node-id", "n2", "--cluster-listen", "127.0.0.1:0", "--cluster-lease", "10",
                     "--admin-listen", "127.0.0.1:0"},
            .ca_from = old.data_dir()});
    }

    // Rows of the source SQLite file as `psql -A -t` prints them ("a|b|c" lines).
    std::string sqlite_rows(const std::string& sql) {
        const std::string script = "import sqlite3, sys\n"
                                   "for row in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]):\n"
                                   "    print('|'.join(str(v) for v in row))\n";
        const std::vector<std::string> argv = {"python3", "-c", script, (old.data_dir() / "registry.db").string(), sql};
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
        return r.out;
    }
    // An admin command of n1's machine (the old data directory, now with --registry).
    std::string admin1(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {bin::relay, "--data-dir", old.data_dir().string(), "--registry", url};
        argv.insert(argv.end(), args.begin(), args.end());
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
        return trim(r.out);
    }
    std::string home_of(const std::string& device) {
        return trim(pg.psql("migrated", "SELECT node_id FROM presence WHERE device_id = '" + device + "'"));
    }
    bool wait_home(const std::string& device, const std::string& node) {
        return wait_until([&] { return home_of(device) == node; }, k_connect_timeout, 50ms);
    }
    std::string n1_arg() const { return "127.0.0.1:" + std::to_string(old.port()); }
    std::string n2_arg() const { return "127.0.0.1:" + std::to_string(n2->port()); }
    // A device proxy authenticating with the CA-issued certificate, dialling `relay`.
    std::unique_ptr<process> ca_device_proxy(const std::string& relay, int target_port,
                                             const std::vector<std::string>& extra = {}) {
        std::vector<std::string> options = {"--cert", leaf.cert.string(), "--key", leaf.key.string(), "--relay", relay};
        options.insert(options.end(), extra.begin(), extra.end());
        return spawn_device_proxy(old, "device-proxy-ca", ca_cs, target_port, options);
    }

    static inline const std::string audit_sql = "SELECT id, time, actor, action, subject, detail FROM audit ORDER BY id";

    relay_fixture old;  // SQLite; after the migration only its data directory and port are used (by n1)
    sgtest::pg_server pg;
    std::string url, sas_cs, off_cs, ca_cs, service_cs, devices_before, audit_before;
    std::vector<std::string> policy_keys_before;
    cert_files ca, leaf;
    run_result migrate;
    std::unique_ptr<process> n1;
    std::unique_ptr<relay_fixture> n2;
};

}  // namespace

TEST_CASE("cluster: migrate --to from SQLite keeps devices, keys, policies, the device CA and the audit trail, and "
          "two nodes serve them", "[integration][postgres][cluster]") {
    migrated_cluster m;
    echo_server target;
    {
        INFO(m.migrate.out << m.migrate.err);
        CHECK(contains(m.migrate.out, "devices: 4\n"));
        CHECK(contains(m.migrate.out, "policies: 5\n"));
        CHECK(contains(m.migrate.out, "audit entries: 7\n"));  // 4 creates, 2 updates, 1 certificate-add
        CHECK(contains(m.migrate.out, "device CAs: 1\n"));
        CHECK_FALSE(contains(m.migrate.out + m.migrate.err, m.pg.password()));
    }
    // Devices as stored (ids, etags, generation ids, keys, thumbprints, status and times), read
    // through n2; the policies' keys; the audit trail with its ids and times, then the migration's
    // own entry, and new entries after it.
    CHECK(trim(m.n2->admin({"device-identity", "list"}).out) == m.devices_before);
    {
        std::vector<std::string> keys;
        for (const char* policy : {"iothubowner", "service", "device", "registryRead", "registryReadWrite"})
            for (const char* type : {"primary", "secondary"})
                keys.push_back(policy_key(*m.n2, policy, type));
        CHECK(keys == m.policy_keys_before);
    }
    const std::string audit_after = m.pg.psql("migrated", "SELECT id, time, actor, action, subject, detail FROM audit "
                                                          "WHERE action <> 'registry-migrate' ORDER BY id");
    CHECK(audit_after == m.audit_before);
    CHECK(count_of(m.audit_before, "\n") == 7);
    CHECK(contains(m.audit_before, "|certificate-add|mg-ca|thumbprint="));
    CHECK(trim(m.pg.psql("migrated", "SELECT id FROM audit WHERE action = 'registry-migrate'")) == "8");
    CHECK(contains(m.pg.psql("migrated", "SELECT detail FROM audit WHERE action = 'registry-migrate'"),
                   "from=\"sqlite " + (m.old.data_dir() / "registry.db").string() + "\" devices=4"));
    admin_ok(*m.n2, {"device-identity", "create", "--device-id", "mg-new"});
    CHECK(trim(m.pg.psql("migrated", "SELECT id FROM audit WHERE subject = 'mg-new'")) == "9");

    // The device CA moved with the registry: n1's machine lists it from there.
    CHECK(contains(m.admin1({"certificate", "list"}), "mg-ca"));
    CHECK_FALSE(std::filesystem::exists(m.old.data_dir() / "device-cas"));

    // The old connection strings work: the SAS device on n2, streamed to through n1 with the old
    // service string (which names n1, the old relay's address).
    auto sas = device_proxy(*m.n2, "device-proxy-sas", m.sas_cs, target.port(), {m.n2_arg()});
    REQUIRE(m.wait_home("mg-sas", "n2"));
    expect_echo(m.old, m.service_cs, "mg-sas", 256 * 1024);
    // The CA-authenticated device on n1, streamed to through n2.
    auto by_ca = m.ca_device_proxy(m.n1_arg(), target.port());
    {
        bool home = m.wait_home("mg-ca-dev", "n1");
        INFO(by_ca->describe());
        REQUIRE(home);
    }
    const std::string service_n2 = "HostName=" + m.n2_arg() + ";SharedAccessKeyName=service;SharedAccessKey=" +
                                   cs_field(m.service_cs, "SharedAccessKey");
    expect_echo(*m.n2, service_n2, "mg-ca-dev", 256 * 1024);
    // The device disabled before the migration stays refused, on both nodes.
    for (const std::string& relay : {m.n1_arg(), m.n2_arg()}) {
        const std::string err = refused_device_proxy(*m.n2, "device-proxy-off", m.off_cs, relay);
        INFO(err);
        CHECK(contains(err, "401003 IoTHubUnauthorized: device is disabled"));
    }
}

// Device CAs live in the registry: one uploaded before `migrate --to` is known to a node on
// another data directory, and one deleted on one node's machine stops authenticating on every
// node, the live connection included (within a second, like a disabled device).
TEST_CASE("cluster: a device CA uploaded before migrate --to is known to a node on another data directory",
          "[integration][postgres][cluster]") {
    migrated_cluster m;
    echo_server target;
    CHECK(contains(trim(m.n2->admin({"certificate", "list"}).out), "mg-ca"));
    auto by_ca = m.ca_device_proxy(m.n2_arg(), target.port(), {"--exit-on-auth-failure"});
    bool home = wait_until([&] { return m.home_of("mg-ca-dev") == "n2" || !by_ca->running(); }, k_connect_timeout, 50ms);
    INFO(by_ca->describe());
    CHECK(home);
    CHECK(m.home_of("mg-ca-dev") == "n2");
    CHECK_FALSE(contains(by_ca->stderr_text(), "401003"));

    // Deleted on n1's machine: n2 closes the device's connection and refuses it from then on.
    m.admin1({"certificate", "delete", "--name", "mg-ca"});
    const auto deleted = steady::now();
    auto cut = logged_after(m.n2->relay(), "event=DeviceRevoked device=mg-ca-dev reason=\"device CA was deleted or replaced\"",
                            deleted, 5s);
    INFO(tail(m.n2->relay().stderr_text(), 3000));
    REQUIRE(cut);
    INFO("cut " << cut->count() << " ms after the admin command exited");
    CHECK(*cut < 1500ms);
    CHECK(by_ca->wait_exit(k_fail_timeout) == 3);
    CHECK(contains(by_ca->stderr_text(), "401003"));
    for (const std::string& relay : {m.n1_arg(), m.n2_arg()}) {
        auto again = m.ca_device_proxy(relay, target.port(), {"--exit-on-auth-failure"});
        INFO(again->describe());
        CHECK(again->wait_exit(k_fail_timeout) == 3);
        CHECK(contains(again->stderr_text(), "401003 IoTHubUnauthorized: client certificate does not chain to a device CA"));
    }
}
