// Reaching the relay through an HTTP proxy (HTTP CONNECT): a real tinyproxy started by the test,
// the real proxies and relay. To prove the traffic went through the proxy, the relay admits only
// 127.0.0.2 (--ip-filter) and tinyproxy dials out from 127.0.0.2 (Bind), so a direct connection
// from 127.0.0.1 is refused; tinyproxy's log lists each CONNECT as well.
#include <catch2/catch.hpp>

#include <sys/socket.h>

#include <regex>
#include <thread>

#include "harness.hpp"

using namespace sgit;

namespace {

// tinyproxy in the foreground with a private configuration: no daemon, no pid file, no log file
// (its log goes to stdout/stderr), no user switch (it warns and keeps the current user).
class tinyproxy_fixture {
public:
    struct options {
        int relay_port = 0;                   // the only port CONNECT may reach
        std::string user{}, password{};       // BasicAuth when user is not empty
        std::string outgoing_address{};       // Bind: the source address of its connections
    };

    explicit tinyproxy_fixture(const options& o) : port_(free_port()) {
        std::string conf = "Port " + std::to_string(port_) +
                           "\nListen 127.0.0.1\nTimeout 600\nMaxClients 100\nLogLevel Connect\n"
                           "Allow 127.0.0.1\nConnectPort " + std::to_string(o.relay_port) + "\n";
        if (!o.user.empty()) conf += "BasicAuth " + o.user + " " + o.password + "\n";
        if (!o.outgoing_address.empty()) conf += "Bind " + o.outgoing_address + "\n";
        const auto path = dir_ / "tinyproxy.conf";
        write_file(path, std::span(reinterpret_cast<const unsigned char*>(conf.data()), conf.size()));
        proc_ = std::make_unique<process>("tinyproxy", std::vector<std::string>{"tinyproxy", "-d", "-c", path.string()},
                                          dir_.path());
        bool up = wait_until([&] { return !proc_->running() || port_listening(port_); }, k_start_timeout);
        INFO(proc_->describe() << " (tinyproxy comes from scripts/install-deps.sh)");
        REQUIRE(up);
        REQUIRE(proc_->running());
    }

    int port() const { return port_; }
    std::string log() const { return proc_->stdout_text() + proc_->stderr_text(); }
    // CONNECT requests for the relay's port that tinyproxy logged.
    std::size_t connects_to(int relay_port) const {
        const std::regex request("Request \\(file descriptor [0-9]+\\): CONNECT [^ ]+:" + std::to_string(relay_port) +
                                 " HTTP/1\\.1");
        const std::string text = log();
        return static_cast<std::size_t>(std::distance(std::sregex_iterator(text.begin(), text.end(), request),
                                                      std::sregex_iterator()));
    }
    std::string url(const std::string& credentials = "") const {
        return "http://" + (credentials.empty() ? "" : credentials + "@") + "127.0.0.1:" + std::to_string(port_);
    }
    process& proc() { return *proc_; }

private:
    temp_dir dir_;
    int port_;
    std::unique_ptr<process> proc_;
};


// The relay's host name in a connection string, without the port ("127.0.0.1", "localhost").
std::string relay_host_of(const std::string& connection_string) {
    auto begin = connection_string.find("HostName=");
    REQUIRE(begin != std::string::npos);
    begin += 9;
    std::string host = connection_string.substr(begin, connection_string.find(';', begin) - begin);
    return host.substr(0, host.rfind(':'));
}

std::unique_ptr<process> spawn_with_env(relay_fixture& relay, const std::string& name,
                                        std::vector<std::string> argv, env_list env) {
    return std::make_unique<process>(name, std::move(argv), relay.dir().path(), std::move(env));
}

// The password tinyproxy checks, and how the URL spells it: "%65" is 'e', so a match proves the
// clients percent-decode the credentials (tinyproxy's BasicAuth syntax allows no characters that
// would need the encoding).
const std::string proxy_password = "pw-s3cret.x";
const std::string proxy_password_in_url = "pw-s3cr%65t.x";

}  // namespace

TEST_CASE("http proxy: the device proxy and the service proxy reach a relay that admits only the proxy's "
          "address, through tinyproxy with Basic auth, and a stream carries data end to end",
          "[integration][http-proxy]") {
    echo_server target;
    relay_fixture relay(relay_config{.args = {"--ip-filter", "accept 127.0.0.2/32", "--ip-filter", "reject 0.0.0.0/0",
                                              "--ip-filter", "reject ::/0"}});
    tinyproxy_fixture proxy({.relay_port = relay.port(), .user = "alice", .password = proxy_password,
                             .outgoing_address = "127.0.0.2"});
    const std::string proxy_url = proxy.url("alice:" + proxy_password_in_url);
    const std::string device_cs = relay.create_device("proxied-device");
    const std::string service_cs = relay.service_connection_string();

    // Control: without the proxy the relay refuses this machine's 127.0.0.1.
    {
        const std::vector<std::string> direct = {bin::echo_service, "--ca-file", relay.ca_file().string(),
                                                 service_cs, "proxied-device", "direct"};
        run_result r = run(direct);
        INFO(describe(direct, r));
        CHECK(r.exit_code != 0);
        CHECK(wait_until([&] { return contains(relay.relay().stderr_text() + relay.relay().stdout_text(),
                                               "IpFiltered"); }, 5s));
    }

    auto device = relay.spawn("device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(), "--proxy",
                                               proxy_url, device_cs, "127.0.0.1", std::to_string(target.port())});
    {
        bool connected = relay.wait_device_connected("proxied-device", *device);
        INFO(device->describe());
        INFO(proxy.log());
        REQUIRE(connected);
    }
    const int local_port = free_port();
    auto service = relay.spawn("service-proxy", {bin::service_proxy, "--ca-file", relay.ca_file().string(), "--proxy",
                                                 proxy_url, service_cs, "proxied-device", std::to_string(local_port)});
    REQUIRE(wait_for_port(local_port));

    unique_fd stream = open_echo_stream(local_port);
    const bytes data = random_bytes(1 << 20);
    transfer_result t = transfer(stream.get(), data, {.shutdown_after_send = true});
    INFO(t.error);
    CHECK(t.ok());
    CHECK(t.received == data.size());
    CHECK(t.received_sha256 == sha256_hex(data));

    // The echo sample shares the option and the code path.
    {
        const std::vector<std::string> echo = {bin::echo_service, "--ca-file", relay.ca_file().string(), "--proxy",
                                               proxy_url, service_cs, "proxied-device", "through the proxy"};
        run_result r = run(echo);
        INFO(describe(echo, r));
        CHECK(r.exit_code == 0);
        CHECK(contains(r.out, "Received stream data: through the proxy"));
    }

    // Through the proxy: the control connection, the service's POST, and both sides joining the stream.
    INFO(proxy.log());
    CHECK(proxy.connects_to(relay.port()) >= 4);
    CHECK(contains(proxy.log(), "Established connection"));
    // The relay sees the proxy's address, not the device's.
    CHECK(contains(relay.relay().stderr_text(), "event=DeviceConnected device=proxied-device peer=127.0.0.2:"));
    // The proxies say which proxy they use, with the password masked, and never print it.
    const std::string logs = device->stderr_text() + device->stdout_text() + service->stderr_text() +
                             service->stdout_text();
    CHECK(contains(device->stderr_text(), "through HTTP proxy http://alice:***@127.0.0.1:" +
                                              std::to_string(proxy.port())));
    CHECK(contains(service->stderr_text(), "through HTTP proxy http://alice:***@"));
    CHECK_FALSE(contains(logs, proxy_password));
    CHECK_FALSE(contains(logs, proxy_password_in_url));
}

// tinyproxy answers missing credentials with 407 and wrong ones with 401: both are shown as they came.
TEST_CASE("http proxy: a wrong proxy password is refused (401), the device proxy keeps retrying with "
          "backoff, without credentials the --stdio service proxy exits with 407 Proxy Authentication Required",
          "[integration][http-proxy]") {
    relay_fixture relay;
    tinyproxy_fixture proxy({.relay_port = relay.port(), .user = "alice", .password = proxy_password});
    const std::string wrong = "wr0ng-pass";
    const std::string device_cs = relay.create_device("refused-device");

    auto device = relay.spawn("device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(), "--proxy",
                                               proxy.url("alice:" + wrong), device_cs, "127.0.0.1",
                                               std::to_string(free_port())});
    // Delays 1 s doubling with jitter: three failed attempts take at most 1 + 2 s of sleeping.
    bool three = wait_until([&] { return reconnect_delays(device->stderr_text()).size() >= 3 || !device->running(); },
                            15s, 50ms);
    const std::string log = device->stderr_text();
    INFO(device->describe());
    INFO(log);
    INFO(proxy.log());
    REQUIRE(three);
    CHECK(device->running());
    CHECK(contains(log, "proxy 127.0.0.1:" + std::to_string(proxy.port()) + " refused CONNECT to relay"));
    CHECK(contains(log, "401 Unauthorized (check the proxy user and password)"));
    const std::vector<double> delays = reconnect_delays(log);
    CHECK(delays[2] > delays[0]);  // growing: [0.5, 1] s, then [1, 2], then [2, 4]
    CHECK(proxy.connects_to(relay.port()) >= 3);
    CHECK_FALSE(relay.device_connected("refused-device"));
    CHECK_FALSE(contains(log, wrong));

    auto [mine, theirs] = socket_pair();
    auto service = spawn_stdio_service_proxy(relay, relay.service_connection_string(), "refused-device", theirs.get(),
                                             {"--proxy", proxy.url()});
    theirs.reset();
    std::optional<int> exit_code = service->wait_exit(k_fail_timeout);
    INFO(service->describe());
    REQUIRE(exit_code.has_value());
    CHECK(*exit_code != 0);
    CHECK(contains(service->stderr_text(), "refused CONNECT to relay"));
    CHECK(contains(service->stderr_text(), "407 Proxy Authentication Required (the proxy wants "
                                           "http://user:password@ in the proxy URL)"));
}

TEST_CASE("http proxy: HTTPS_PROXY from the environment is used, NO_PROXY and --proxy \"\" bypass it",
          "[integration][http-proxy]") {
    relay_fixture relay;
    tinyproxy_fixture proxy({.relay_port = relay.port()});
    const int dead_port = free_port();  // nothing listens: a client that used it could not connect
    const std::string relay_host = relay_host_of(relay.service_connection_string());
    const std::string ca = relay.ca_file().string();
    const std::string target = std::to_string(free_port());

    // HTTPS_PROXY alone: through the proxy.
    auto via_env = spawn_with_env(relay, "device-env", {bin::device_proxy, "--ca-file", ca,
                                                        relay.create_device("env-device"), "127.0.0.1", target},
                                  {{"HTTPS_PROXY", proxy.url()}});
    {
        bool connected = relay.wait_device_connected("env-device", *via_env);
        INFO(via_env->describe());
        REQUIRE(connected);
    }
    const std::size_t connects = proxy.connects_to(relay.port());
    CHECK(connects >= 1);
    CHECK(contains(via_env->stderr_text(), "through HTTP proxy " + proxy.url()));

    // NO_PROXY naming the relay's host: direct, the proxy sees nothing new.
    auto bypassed = spawn_with_env(relay, "device-no-proxy", {bin::device_proxy, "--ca-file", ca,
                                                              relay.create_device("bypass-device"), "127.0.0.1", target},
                                   {{"https_proxy", proxy.url()}, {"NO_PROXY", "example.com," + relay_host}});
    {
        bool connected = relay.wait_device_connected("bypass-device", *bypassed);
        INFO(bypassed->describe());
        REQUIRE(connected);
    }
    // --proxy "" ignores a proxy in the environment (one that is not even there).
    auto explicit_direct = spawn_with_env(relay, "device-direct",
                                          {bin::device_proxy, "--ca-file", ca, "--proxy", "",
                                           relay.create_device("direct-device"), "127.0.0.1", target},
                                          {{"HTTPS_PROXY", "http://127.0.0.1:" + std::to_string(dead_port)}});
    {
        bool connected = relay.wait_device_connected("direct-device", *explicit_direct);
        INFO(explicit_direct->describe());
        REQUIRE(connected);
    }
    INFO(proxy.log());
    CHECK(proxy.connects_to(relay.port()) == connects);
    CHECK_FALSE(contains(bypassed->stderr_text(), "through HTTP proxy"));
    CHECK_FALSE(contains(explicit_direct->stderr_text(), "through HTTP proxy"));

    // The service proxy reads the environment too: a proxy that is not there is a clear failure.
    auto [mine, theirs] = socket_pair();
    auto service = std::make_unique<process>(
        "service-dead-proxy",
        std::vector<std::string>{bin::service_proxy, "--ca-file", ca, "--stdio", relay.service_connection_string(),
                                 "env-device"},
        relay.dir().path(), env_list{{"HTTPS_PROXY", "127.0.0.1:" + std::to_string(dead_port)}}, theirs.get());
    theirs.reset();
    std::optional<int> exit_code = service->wait_exit(k_fail_timeout);
    INFO(service->describe());
    REQUIRE(exit_code.has_value());
    CHECK(*exit_code != 0);
    CHECK(contains(service->stderr_text(), "cannot connect to proxy 127.0.0.1:" + std::to_string(dead_port)));
}

// A peer on the proxy's port that answers CONNECT the way broken or hostile middleboxes do (the
// real-proxy cases are above): each answer must end in a clear error, never a hang or a TLS attempt
// on top of garbage. It also records the CONNECT request exactly as the client sent it.
TEST_CASE("http proxy: the CONNECT request on the wire, and answers that are not a tunnel are clear failures",
          "[integration][http-proxy]") {
    relay_fixture relay;
    const std::string service_cs = relay.service_connection_string();
    const std::string relay_authority = relay_host_of(service_cs) + ":" + std::to_string(relay.port());
    struct bad_answer {
        std::string bytes;
        std::string expected;
    };
    const std::vector<bad_answer> answers = {
        {"SSH-2.0-OpenSSH_9.2p1\r\n\r\n", "answered CONNECT with something that is not HTTP/1"},
        {"HTTP/1.1 200 Connection established\r\nX-Filler: " + std::string(20000, 'a') + "\r\n\r\n",
         "answered CONNECT with a header over 16 KiB"},
        {"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
         "refused CONNECT to relay " + relay_authority + ": 502 Bad Gateway"},
        {"HTTP/1.1 200 Connection established\r\n\r\nEXTRA", "sent data before the tunnel"},
        {"", "closed the connection without answering CONNECT"},
    };
    for (const auto& answer : answers) {
        tcp_listener fake_proxy;
        std::string request;
        std::jthread server([&](std::stop_token stop) {
            unique_fd fd = fake_proxy.accept(k_fail_timeout, stop);
            if (!fd) return;
            char buf[4096];
            while (request.find("\r\n\r\n") == std::string::npos) {
                ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
                if (n <= 0) return;
                request.append(buf, static_cast<std::size_t>(n));
            }
            if (!answer.bytes.empty()) ::send(fd.get(), answer.bytes.data(), answer.bytes.size(), MSG_NOSIGNAL);
            else ::shutdown(fd.get(), SHUT_WR);
            wait_closed(fd.get(), k_fail_timeout);
        });
        auto [mine, theirs] = socket_pair();
        auto service = spawn_stdio_service_proxy(
            relay, service_cs, "any-device", theirs.get(),
            {"--proxy", "http://bob:p%40ss@127.0.0.1:" + std::to_string(fake_proxy.port())});
        theirs.reset();
        std::optional<int> exit_code = service->wait_exit(k_fail_timeout);
        server.request_stop();
        server.join();
        INFO("answer: " << answer.bytes.substr(0, 60));
        INFO(service->describe());
        REQUIRE(exit_code.has_value());
        CHECK(*exit_code != 0);
        CHECK(contains(service->stderr_text(), answer.expected));
        CHECK(request == "CONNECT " + relay_authority + " HTTP/1.1\r\nHost: " + relay_authority +
                             "\r\nUser-Agent: streamgate/0.1\r\nProxy-Connection: Keep-Alive\r\n"
                             "Proxy-Authorization: Basic " + base64_encode(std::span(
                                 reinterpret_cast<const unsigned char*>("bob:p@ss"), 8)) + "\r\n\r\n");
    }
}
