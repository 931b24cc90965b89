// Cluster mode (issue 10): two relays on one real PostgreSQL 15, each with its cluster listener.
// A stream asked of the node that does not hold the device is created by the device's node and
// joined there; a newer connection elsewhere replaces the older (400027); a node killed with -9
// is ignored once its lease lapsed (404103 at once) and the device proxy moves to the other
// node (--relay twice); the cluster listener refuses requests not signed with the shared secret.
#include <catch2/catch.hpp>

#include <openssl/hmac.h>
#include <sys/socket.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "cluster_fixture.hpp"

using namespace sgit;

namespace {

int cluster_port(relay_fixture& node) {
    static const std::regex joined(R"(event=ClusterJoined node=\S+ epoch=\S+ clusterAddress=127\.0\.0\.1:(\d+))");
    std::smatch m;
    const std::string log = node.relay().stderr_text();
    REQUIRE(std::regex_search(log, m, joined));
    return std::stoi(m[1]);
}

// wire_client.py against a node's cluster listener (TLS verified against the node's CA).
wire_result cluster_wire(relay_fixture& node, const std::vector<std::string>& steps) {
    std::vector<std::string> argv = {"python3", wire_client_script().string(), "--port",
                                     std::to_string(cluster_port(node)), "--ca", node.ca_file().string(),
                                     "script", json_list(steps)};
    wire_result w;
    w.command = "wire_client.py (cluster listener) script";
    w.raw = run(argv);
    std::istringstream lines(w.raw.out);
    std::string line;
    while (std::getline(lines, line)) {
        wire_event e;
        e.line = line;
        if (wire_detail::parse_flat_json(line, e.fields)) w.events.push_back(std::move(e));
    }
    return w;
}

std::string upper(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

// A cluster request's signature as a node makes it (docs/PROTOCOL.md, "The cluster listener").
std::string cluster_signature(const bytes& secret, const std::string& from, const std::string& to,
                              const std::string& time, const std::string& body) {
    const std::string text = "POST\n/cluster/v1/streams\n" + from + "\n" + to + "\n" + time + "\n" + upper(sha256_hex(body));
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), reinterpret_cast<const unsigned char*>(text.data()),
         text.size(), out, &n);
    return base64_encode(std::span<const unsigned char>(out, n));
}

}  // namespace

TEST_CASE("cluster: a stream asked of n2 for a device on n1 is created by n1 and joined there",
          "[integration][postgres][cluster]") {
    cluster c;
    echo_server target;
    const std::string device_cs = c.n2.create_device("cl-echo");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cl-echo", *proxy));
    REQUIRE(c.wait_home("cl-echo", "n1"));

    expect_echo(c.n2, c.service_cs(c.n2), "cl-echo");
    // The echo is back when the client has its bytes; n1 logs the stream's end just after.
    CHECK(wait_until([&] { return contains(c.n1.relay().stderr_text(), "event=StreamClosed device=cl-echo"); }, 5s));
    const std::string log1 = c.n1.relay().stderr_text(), log2 = c.n2.relay().stderr_text();
    INFO(tail(log1, 3000));
    INFO(tail(log2, 3000));
    // n2 asked n1 over the cluster listener; the stream's data went through n1 (its public URL).
    CHECK(contains(log2, "event=StreamForwarded device=cl-echo stream="));
    CHECK(contains(log2, "home=n1 status=200 accepted=True"));
    CHECK(contains(log1, "event=ClusterStreamRequest from=n2 device=cl-echo"));
    CHECK(contains(log1, "publicUrl=wss://127.0.0.1:" + std::to_string(c.n1.port())));
    CHECK(contains(log1, "event=StreamEstablished device=cl-echo"));
    CHECK(contains(log1, "event=StreamClosed device=cl-echo"));
    CHECK_FALSE(contains(log2, "event=StreamEstablished"));
    CHECK(target.connections_accepted() == 1);
    {
        const http_answer m1 = http_get(wait_listening_address(c.n1.relay(), "event=AdminListening"), "/metrics");
        const http_answer m2 = http_get(wait_listening_address(c.n2.relay(), "event=AdminListening"), "/metrics");
        INFO(m1.error << m2.error);
        CHECK(metric(m2.body, "streamgate_cluster_stream_requests_total{direction=\"sent\"}") == 1.0);
        CHECK(metric(m1.body, "streamgate_cluster_stream_requests_total{direction=\"received\"}") == 1.0);
        CHECK(metric(m1.body, "streamgate_cluster_fenced") == 0.0);
    }
    CHECK(contains(log2, "home=n1 status=200 accepted=True connection=new"));
    // The next request to n1 within 10 s goes on the connection the first one opened.
    expect_echo(c.n2, c.service_cs(c.n2), "cl-echo", 4096);
    CHECK(contains(c.n2.relay().stderr_text(), "home=n1 status=200 accepted=True connection=kept"));

    // The answer n2 gives names n1's public URL (here its HostName): that is where both sides join.
    {
        const std::string token = sas_token(relay_host(c.n2), policy_key(c.n2, "service"), "service", unix_now() + 600);
        wire_result w = wire_script(c.n2, {
            step({{"op", "connect"}, {"conn", "c"}}),
            step({{"op", "request"}, {"label", "post"}, {"conn", "c"}, {"method", "POST"},
                  {"path", "/twins/cl-echo/streams/TestStream"},
                  {"headers", std::vector<std::string>{"Authorization: " + token}}}),
        });
        const wire_event& post = w.at("post");
        INFO(w.describe());
        CHECK(post.status() == 200);
        CHECK(post.get("h.iothub-streaming-is-accepted") == "True");
        CHECK(post.get("h.iothub-streaming-url").starts_with("wss://127.0.0.1:" + std::to_string(c.n1.port()) +
                                                            "/bridges/streamgate/cl-echo/"));
        CHECK_FALSE(post.get("h.iothub-streaming-auth-token").empty());
    }

    // A device that no live node holds: 404103 at once, from either node.
    c.n2.create_device("cl-nowhere");
    for (relay_fixture* front : {&c.n1, &c.n2}) {
        attempt a = echo_service(*front, c.service_cs(*front), "cl-nowhere");
        INFO(describe({bin::echo_service}, a.r));
        CHECK(a.r.exit_code != 0);
        CHECK(contains(a.r.err, "404103"));
        CHECK(a.took < 3s);
    }
}

TEST_CASE("cluster: a newer connection of the device on n2 closes the older one on n1 with 400027",
          "[integration][postgres][cluster]") {
    cluster c;
    echo_server target;
    const std::string device_cs = c.n2.create_device("cl-move");
    auto older = device_proxy(c.n1, "device-proxy-n1", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cl-move", *older));
    REQUIRE(c.wait_home("cl-move", "n1"));

    auto newer = device_proxy(c.n2, "device-proxy-n2", device_cs, target.port(), {c.relay_arg(c.n2)});
    bool replaced = wait_until([&] { return contains(older->stderr_text(), "400027"); }, k_connect_timeout);
    INFO(older->describe());
    INFO(newer->describe());
    REQUIRE(replaced);
    older->kill(SIGKILL);  // or it reconnects and replaces the newer one in turn
    CHECK(contains(c.n1.relay().stderr_text(), "event=DeviceReplaced device=cl-move"));
    CHECK(c.wait_home("cl-move", "n2"));
    CHECK(wait_until([&] { return contains(newer->stderr_text(), "connected to relay"); }, k_connect_timeout));
    CHECK_FALSE(contains(newer->stderr_text(), "400027"));
    // The registry says Connected (n1's close of the older connection does not overwrite it).
    CHECK(wait_until([&] { return c.n2.connection_state("cl-move") == "Connected"; }, k_connect_timeout, 100ms));
    // Streams reach it from both nodes: on n2 itself, and from n1 through the cluster listener.
    expect_echo(c.n2, c.service_cs(c.n2), "cl-move", 256 * 1024);
    expect_echo(c.n1, c.service_cs(c.n1), "cl-move", 256 * 1024);
    CHECK(contains(c.n1.relay().stderr_text(), "event=StreamForwarded device=cl-move"));
    CHECK(c.n2.connection_state("cl-move") == "Connected");
}

TEST_CASE("cluster: a node killed with -9 is not used once its lease lapsed, and the device moves to the other node",
          "[integration][postgres][cluster]") {
    cluster c("2");
    echo_server target;
    const std::string device_cs = c.n2.create_device("cl-lease");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1), c.relay_arg(c.n2)});
    REQUIRE(c.n1.wait_device_connected("cl-lease", *proxy));
    REQUIRE(c.wait_home("cl-lease", "n1"));
    expect_echo(c.n2, c.service_cs(c.n2), "cl-lease", 64 * 1024);

    // The device proxy is held still so that it cannot move before the lease lapsed.
    proxy->kill(SIGSTOP);
    REQUIRE(c.n1.stop(SIGKILL) == 128 + SIGKILL);
    const bool lapsed = wait_until([&] {
        return trim(c.pg.psql("cluster", "SELECT count(*) FROM cluster_nodes WHERE node_id = 'n1' AND lease_until < now()")) == "1";
    }, 10s, 100ms);
    REQUIRE(lapsed);
    CHECK(c.home_of("cl-lease") == "n1");  // the row is still there: the lease decides
    {
        attempt a = echo_service(c.n2, c.service_cs(c.n2), "cl-lease");
        INFO(describe({bin::echo_service}, a.r));
        CHECK(a.r.exit_code != 0);
        CHECK(contains(a.r.err, "404103"));
        CHECK(a.took < 3s);
        CHECK(contains(c.n2.relay().stderr_text(), "device=cl-lease stream=TestStream result=404103 reason=\"no live relay holds the device\""));
    }

    // Let go, the device proxy finds its connection gone and dials the next --relay: n2.
    proxy->kill(SIGCONT);
    REQUIRE(c.wait_home("cl-lease", "n2", 30s));
    INFO(proxy->describe());
    CHECK(contains(proxy->stderr_text(), "connected to relay " + c.relay_arg(c.n2)));
    // The relay it lost is the one it had dialled (n1), not its connection string's HostName (n2).
    CHECK(contains(proxy->stderr_text(), "lost connection to relay " + c.relay_arg(c.n1) + ":"));
    expect_echo(c.n2, c.service_cs(c.n2), "cl-lease");
}

TEST_CASE("cluster: the devices of a node killed with -9 are marked Disconnected by a live node once its lease "
          "lapsed, a live node's are not", "[integration][postgres][cluster]") {
    cluster c("2");
    echo_server target;
    const std::string dead_cs = c.n2.create_device("cl-swept");
    const std::string live_cs = c.n2.create_device("cl-kept");
    auto dead = device_proxy(c.n1, "device-proxy-dead", dead_cs, target.port(), {c.relay_arg(c.n1)});
    auto live = device_proxy(c.n2, "device-proxy-live", live_cs, target.port(), {c.relay_arg(c.n2)});
    REQUIRE(c.n1.wait_device_connected("cl-swept", *dead));
    REQUIRE(c.n2.wait_device_connected("cl-kept", *live));
    REQUIRE(c.wait_home("cl-swept", "n1"));
    dead->kill(SIGSTOP);  // it cannot move to n2 (it only knows n1 anyway)
    REQUIRE(c.n1.stop(SIGKILL) == 128 + SIGKILL);
    const auto killed = steady::now();
    // Two leases plus 5 s after it connected, and a sweep every lease.
    CHECK(wait_until([&] { return c.n2.connection_state("cl-swept") == "Disconnected"; }, 25s, 250ms));
    INFO("swept " << std::chrono::duration_cast<millis>(steady::now() - killed).count() << " ms after the kill");
    CHECK(contains(c.n2.relay().stderr_text(), "event=ConnectionStateSwept node=n2 devices=1"));
    CHECK(c.n2.connection_state("cl-kept") == "Connected");
    dead->kill(SIGCONT);
}

TEST_CASE("cluster: a home that does not answer in time is 504101", "[integration][postgres][cluster]") {
    cluster c("30");  // the frozen node's lease outlives the test
    echo_server target;
    const std::string device_cs = c.n2.create_device("cl-frozen");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cl-frozen", *proxy));
    REQUIRE(c.wait_home("cl-frozen", "n1"));
    c.n1.relay().kill(SIGSTOP);
    attempt a = echo_service(c.n2, c.service_cs(c.n2), "cl-frozen");
    c.n1.relay().kill(SIGCONT);
    INFO(describe({bin::echo_service}, a.r));
    CHECK(a.r.exit_code != 0);
    CHECK(contains(a.r.err, "504101"));
    CHECK(a.took < 20s);
    CHECK(contains(c.n2.relay().stderr_text(), "result=504101 home=n1"));
    // n1 thawed serves again.
    expect_echo(c.n2, c.service_cs(c.n2), "cl-frozen", 64 * 1024);
}

TEST_CASE("cluster: the cluster listener refuses requests not signed with the cluster's secret",
          "[integration][postgres][cluster]") {
    cluster c;
    c.n2.create_device("cl-auth");
    const bytes secret = base64_decode(trim(c.pg.psql("cluster", "SELECT secret FROM cluster_secret")));
    REQUIRE(secret.size() == 32);
    const std::string body = R"({"deviceId":"cl-auth","streamName":"TestStream","connectTimeout":5,"responseTimeout":5})";
    const std::string now = std::to_string(unix_now());
    auto post = [&](const std::string& label, const std::vector<std::string>& headers) {
        return step({{"op", "request"}, {"label", label.c_str()}, {"conn", label.c_str()}, {"method", "POST"},
                     {"path", "/cluster/v1/streams"}, {"headers", headers}, {"body", body}});
    };
    auto connect = [&](const std::string& conn) { return step({{"op", "connect"}, {"conn", conn.c_str()}}); };
    auto signed_headers = [&](const std::string& from, const std::string& to, const std::string& time,
                              const std::string& sig) {
        return std::vector<std::string>{"x-streamgate-node: " + from, "x-streamgate-to: " + to,
                                        "x-streamgate-time: " + time, "Authorization: StreamgateCluster " + sig};
    };
    const std::string good = cluster_signature(secret, "n2", "n1", now, body);
    const std::string old = std::to_string(unix_now() - 120);
    wire_result w = cluster_wire(c.n1, {
        connect("none"), post("none", {}),
        connect("sas"), post("sas", {"Authorization: " + sas_token(relay_host(c.n1), policy_key(c.n1, "service"), "service",
                                                                   unix_now() + 600)}),
        connect("wrong"), post("wrong", signed_headers("n2", "n1", now, cluster_signature(bytes(32, 7), "n2", "n1", now, body))),
        connect("other"), post("other", signed_headers("n2", "n9", now, cluster_signature(secret, "n2", "n9", now, body))),
        connect("stale"), post("stale", signed_headers("n2", "n1", old, cluster_signature(secret, "n2", "n1", old, body))),
        connect("good"), post("good", signed_headers("n2", "n1", now, good)),
    });
    INFO(w.describe());
    for (const char* label : {"none", "sas", "wrong", "other", "stale"}) {
        const wire_event& e = w.at(label);
        INFO(label << ": " << e.line);
        CHECK(e.status() == 401);
        CHECK(e.error_code() == 401003);
    }
    // Signed right, the request is served: the device is not on n1, so 404103 (and not 401).
    CHECK(w.at("good").status() == 404);
    CHECK(w.at("good").error_code() == 404103);
    const std::string log = c.n1.relay().stderr_text();
    CHECK(count_of(log, "event=AuthFailed") >= 5);
    CHECK(contains(log, "endpoint=cluster"));
    CHECK_FALSE(contains(log, good));

    // Plain TCP without TLS gets nothing, and the main port has no cluster endpoint.
    {
        unique_fd fd = connect_tcp(cluster_port(c.n1));
        const std::string junk = "POST /cluster/v1/streams HTTP/1.1\r\nHost: x\r\n\r\n";
        REQUIRE(::send(fd.get(), junk.data(), junk.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(junk.size()));
        closed_result closed = wait_closed(fd.get(), 10s);
        CHECK(closed.closed);
    }
    wire_result main_port = wire_script(c.n1, {connect("m"), post("m", signed_headers("n2", "n1", now, good))});
    INFO(main_port.describe());
    CHECK(main_port.at("m").status() == 404);
}

TEST_CASE("cluster: a node that cannot renew its lease fences itself, and serves again when the database is back",
          "[integration][postgres][cluster]") {
    cluster c("2");
    echo_server target;
    const std::string device_cs = c.n2.create_device("cl-fence");
    auto proxy = device_proxy(c.n1, "device-proxy", device_cs, target.port(), {c.relay_arg(c.n1)});
    REQUIRE(c.n1.wait_device_connected("cl-fence", *proxy));
    REQUIRE(c.wait_home("cl-fence", "n1"));
    const bytes secret = base64_decode(trim(c.pg.psql("cluster", "SELECT secret FROM cluster_secret")));
    const std::string body = R"({"deviceId":"cl-fence","streamName":"TestStream","connectTimeout":5,"responseTimeout":5})";
    auto signed_request = [&] {
        const std::string now = std::to_string(unix_now());
        return cluster_wire(c.n1, {
            step({{"op", "connect"}, {"conn", "c"}}),
            step({{"op", "request"}, {"label", "offer"}, {"conn", "c"}, {"method", "POST"},
                  {"path", "/cluster/v1/streams"},
                  {"headers", std::vector<std::string>{"x-streamgate-node: n2", "x-streamgate-to: n1",
                                                       "x-streamgate-time: " + now,
                                                       "Authorization: StreamgateCluster " +
                                                           cluster_signature(secret, "n2", "n1", now, body)}},
                  {"body", body}}),
        });
    };

    c.pg.stop("immediate");
    const bool fenced = wait_until([&] { return contains(c.n1.relay().stderr_text(), "event=Fenced node=n1"); }, 10s);
    INFO(tail(c.n1.relay().stderr_text(), 3000));
    REQUIRE(fenced);
    {
        // Asked for a stream to its own device, the fenced node refuses (it may be dead to the others).
        wire_result w = signed_request();
        INFO(w.describe());
        CHECK(w.at("offer").status() == 503);
        CHECK(w.at("offer").error_code() == 503001);
    }
    CHECK(proxy->running());
    CHECK_FALSE(contains(proxy->stderr_text(), "400027"));  // its devices stay connected
    const std::string admin = wait_listening_address(c.n1.relay(), "event=AdminListening");
    {
        const http_answer ready = http_get(admin, "/readyz");
        CHECK(ready.status == 503);
        CHECK(ready.body == "fenced\n");
        const std::string m = http_get(admin, "/metrics").body;
        CHECK(metric(m, "streamgate_cluster_fenced") == 1.0);
        CHECK(metric(m, "streamgate_cluster_lease_age_seconds").value_or(0) > 2.0);  // the lease is 2 s
        CHECK(metric(m, "streamgate_cluster_database_errors_total").value_or(0) >= 1.0);
        CHECK(metric(m, "streamgate_cluster_presence_rows") == 1.0);  // its device stays connected
    }

    c.pg.start();
    // Unlogged tables are empty after the crash: the node joins again and claims its devices anew.
    CHECK(wait_until([&] { return contains(c.n1.relay().stderr_text(), "event=Unfenced node=n1"); }, 20s));
    CHECK(c.wait_home("cl-fence", "n1", 20s));
    CHECK(wait_until([&] { return contains(c.n1.relay().stderr_text(), "event=PresenceRepublished node=n1"); }, 10s));
    // n2 lost its lease too and takes no new streams (503001) until it has renewed it: the stream
    // is asked of n2 once both nodes are ready again.
    const std::string admin2 = wait_listening_address(c.n2.relay(), "event=AdminListening");
    CHECK(wait_until([&] { return http_get(admin2, "/readyz").status == 200; }, 20s, 100ms));
    INFO(tail(c.n2.relay().stderr_text(), 3000));
    expect_echo(c.n2, c.service_cs(c.n2), "cl-fence", 64 * 1024);
    CHECK_FALSE(contains(proxy->stderr_text(), "400027"));
    CHECK(http_get(admin, "/readyz").status == 200);
}

TEST_CASE("cluster: --node-id, --cluster-listen, --public-url, --cluster-lease and --relay from the command line, "
          "environment and TOML", "[integration][cluster]") {
    temp_dir dir;
    {
        const auto file = dir / "relay.toml";
        std::ofstream(file) << "node-id = \"from-toml\"\ncluster-listen = \"127.0.0.1:9443\"\n"
                               "public-url = \"wss://n1.example.com:443\"\ncluster-lease = 4\n";
        run_result r = run({bin::relay, "--config", file.string(), "--print-config"});
        INFO(r.out << r.err);
        CHECK(r.exit_code == 0);
        CHECK(contains(r.out, "node-id = \"from-toml\""));
        CHECK(contains(r.out, "cluster-listen = \"127.0.0.1:9443\""));
        CHECK(contains(r.out, "public-url = \"wss://n1.example.com:443\""));
        CHECK((contains(r.out, "cluster-lease = 4\n") || contains(r.out, "cluster-lease = \"4\"")));
        run_result env = run({bin::relay, "--config", file.string(), "--print-config"}, {{"STREAMGATE_NODE_ID", "from-env"}});
        CHECK(contains(env.out, "node-id = \"from-env\""));
        run_result cli = run({bin::relay, "--config", file.string(), "--node-id", "from-cli", "--print-config"},
                             {{"STREAMGATE_NODE_ID", "from-env"}});
        CHECK(contains(cli.out, "node-id = \"from-cli\""));
    }
    {
        // Cluster mode needs the shared registry, and says so.
        run_result r = run({bin::relay, "--data-dir", (dir / "sg").string(), "--listen", "127.0.0.1:0", "--admin-listen",
                            "off", "--cluster-listen", "127.0.0.1:0"});
        INFO(r.err);
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "--cluster-listen needs a shared PostgreSQL registry"));
    }
    {
        const auto file = dir / "device-proxy.toml";
        std::ofstream(file) << "relay = [\"n1.example.com:443\", \"n2.example.com:8443\"]\n";
        run_result r = run({bin::device_proxy, "--config", file.string(), "--print-config",
                            "HostName=h;DeviceId=d;SharedAccessKey=AAAA", "localhost", "22"});
        INFO(r.out << r.err);
        CHECK(contains(r.out, "relay = [\"n1.example.com:443\", \"n2.example.com:8443\"]"));
        run_result cli = run({bin::device_proxy, "--relay", "a:1", "--relay", "[::1]:2", "--print-config",
                              "HostName=h;DeviceId=d;SharedAccessKey=AAAA", "localhost", "22"});
        CHECK(contains(cli.out, "relay = [\"a:1\", \"[::1]:2\"]"));
        run_result bad = run({bin::device_proxy, "--relay", "no-port", "HostName=h;DeviceId=d;SharedAccessKey=AAAA",
                              "localhost", "22"});
        CHECK(bad.exit_code == 2);
        CHECK(contains(bad.err, "--relay expects HOST:PORT"));
    }
}

// A cluster node is dialled at its own address (the device proxy's --relay, the stream URLs)
// while connection strings and tokens name the cluster's one --host-name: the relay's own
// certificate carries the --public-url host, and tokens scoped to it are accepted too
// (deploy/compose.cluster.yaml: the device moved to no other node before). 127.0.0.2 is a
// loopback address the relay names only through --public-url.
TEST_CASE("cluster: a relay dialled at its --public-url host verifies, and takes tokens for its --host-name and for "
          "that host", "[integration][cluster]") {
    relay_fixture relay(relay_config{.args = {"--host-name", "relay.test", "--public-url", "wss://127.0.0.2:8443"},
                                     .listen_host = "0.0.0.0"});
    const std::string dial = "127.0.0.2:" + std::to_string(relay.port());
    echo_server target;
    for (const std::string id : {"pub-shared", "pub-own"}) {
        run_result r = relay.admin({"device-identity", "create", "--device-id", id});
        INFO(r.out << r.err);
        REQUIRE(r.exit_code == 0);
        std::string cs = trim(r.out);
        REQUIRE(contains(cs, "HostName=relay.test:" + std::to_string(relay.port()) + ";"));
        if (id == "pub-own")  // a token scoped to the --public-url host
            cs = "HostName=" + dial + cs.substr(cs.find(';'));
        auto proxy = spawn_device_proxy(relay, id, cs, target.port(), {"--relay", dial});
        INFO(proxy->describe());
        REQUIRE(relay.wait_device_connected(id, *proxy));
        CHECK(contains(proxy->stderr_text(), "connected to relay " + dial));
    }
}
