// A device behind a real firewall: two network namespaces joined by a veth pair; the device's
// namespace refuses every inbound connection and may only dial out. SSH through Streamgate works,
// a direct connection does not.
//
// Needs root, `ip netns` and nftables (`nft`) or iptables. Where it cannot run, the test passes
// with a warning that starts with "skipped:" and says why (Catch2 2.13 has no SKIP).
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <stdexcept>

#include "harness.hpp"
#include "ssh_client.hpp"

using namespace sgit;

namespace {

bool have(const std::string& tool) {
    return run({"sh", "-c", "command -v " + tool}, {}, 5s).exit_code == 0;
}

// The device namespace's inbound policy: drop, except loopback and replies to connections it
// opened; a TCP SYN is answered with a reset so a direct attempt fails at once.
void install_firewall(const netns& ns) {
    if (have("nft")) {
        const std::string rules =
            "table inet sgit_fw {\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy drop;\n"
            "    iif lo accept\n"
            "    ct state established,related accept\n"
            "    meta l4proto tcp reject with tcp reset\n"
            "  }\n"
            "}\n";
        temp_dir dir;
        write_file(dir / "rules.nft", std::span(reinterpret_cast<const unsigned char*>(rules.data()), rules.size()));
        const std::vector<std::string> load = {"ip", "netns", "exec", ns.name(), "nft", "-f", (dir / "rules.nft").string()};
        run_result r = run(load);
        INFO(describe(load, r));
        REQUIRE(r.exit_code == 0);
        return;
    }
    for (const std::vector<std::string>& rule : std::vector<std::vector<std::string>>{
             {"-A", "INPUT", "-i", "lo", "-j", "ACCEPT"},
             {"-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"},
             {"-A", "INPUT", "-p", "tcp", "--syn", "-j", "REJECT", "--reject-with", "tcp-reset"},
             {"-P", "INPUT", "DROP"}}) {
        std::vector<std::string> argv = {"ip", "netns", "exec", ns.name(), "iptables"};
        argv.insert(argv.end(), rule.begin(), rule.end());
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
    }
}

// A listening socket on 0.0.0.0:<ephemeral> of the calling thread's network namespace.
unique_fd listen_any() {
    // No Catch assertions here: this runs on run_inside's thread.
    unique_fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd.get(), 16) != 0)
        throw std::runtime_error(std::string("listen on 0.0.0.0: ") + std::strerror(errno));
    return fd;
}

int bound_port_of(int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    return ntohs(a.sin_port);
}

// Why this machine cannot run the test, or "" if it can.
std::string cannot_run() {
    if (::geteuid() != 0) return "needs root (network namespaces, veth, firewall rules)";
    if (!have("ip")) return "`ip` (iproute2) is not installed";
    if (!have("nft") && !have("iptables"))
        return "neither nft (apt-get install nftables) nor iptables is installed";
    try {
        netns probe("sgit-probe-" + std::to_string(::getpid()));
    } catch (const std::exception& e) {
        return std::string("`ip netns add` fails here: ") + e.what();
    }
    return "";
}

}  // namespace

TEST_CASE("firewall (netns as root only - skipped with a warning elsewhere): SSH through Streamgate "
          "reaches a device whose namespace drops every inbound connection while a direct connection "
          "fails at once",
          "[integration][firewall][netns]") {
    if (const std::string why = cannot_run(); !why.empty()) {
        WARN("skipped: " << why);
        return;
    }
    const std::string tag = std::to_string(::getpid());
    // RAII: the namespaces (and the veth pair inside them) go away even when a REQUIRE fails.
    auto relay_ns = std::make_unique<netns>("sgit-relay-" + tag);
    auto device_ns = std::make_unique<netns>("sgit-dev-" + tag);
    // The veth pair is created directly inside the namespaces: nothing of it ever exists in the
    // root namespace, and 10.99.0.0/24 is only routed inside them.
    {
        const std::vector<std::string> argv = {"ip", "link", "add", "sgr" + tag, "netns", relay_ns->name(), "type",
                                               "veth", "peer", "name", "sgd" + tag, "netns", device_ns->name()};
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
    }
    relay_ns->ip({"addr", "add", "10.99.0.1/24", "dev", "sgr" + tag});
    relay_ns->ip({"link", "set", "sgr" + tag, "up"});
    device_ns->ip({"addr", "add", "10.99.0.2/24", "dev", "sgd" + tag});
    device_ns->ip({"link", "set", "sgd" + tag, "up"});
    install_firewall(*device_ns);

    // A listener on every address of the device namespace (0.0.0.0): what a direct connection
    // from the relay's side would reach without the firewall.
    unique_fd open_port;
    device_ns->run_inside([&] { open_port = listen_any(); });
    const int open_port_number = bound_port_of(open_port.get());
    sshd_fixture sshd(device_ns->prefix());  // sshd on the device namespace's own 127.0.0.1

    relay_fixture relay(relay_config{.prefix = relay_ns->prefix(), .listen_host = "10.99.0.1"});
    const std::string device_cs = relay.create_device("fw-device");
    REQUIRE(contains(device_cs, "HostName=10.99.0.1:" + std::to_string(relay.port()) + ";"));
    std::vector<std::string> dp = device_ns->prefix();
    dp.insert(dp.end(), {bin::device_proxy, "--ca-file", relay.ca_file().string(), device_cs, "127.0.0.1",
                         std::to_string(sshd.port())});
    auto device_proxy = relay.spawn("device-proxy", dp);
    {
        bool connected = relay.wait_device_connected("fw-device", *device_proxy);
        INFO(device_proxy->describe());
        REQUIRE(connected);  // dialing out through the firewall works
    }

    const int local_port = free_port();
    std::vector<std::string> sp = relay_ns->prefix();
    sp.insert(sp.end(), {bin::service_proxy, "--ca-file", relay.ca_file().string(), relay.service_connection_string(),
                         "fw-device", std::to_string(local_port)});
    auto service_proxy = relay.spawn("service-proxy", sp);
    {
        bool up = wait_until(
            [&] { return !service_proxy->running() || port_listening_in(service_proxy->pid(), local_port); },
            k_start_timeout);
        INFO(service_proxy->describe());
        REQUIRE(up);
    }

    // SSH from the relay's namespace, through Streamgate.
    connect_result tunnel_conn;
    relay_ns->run_inside([&] { tunnel_conn = try_connect("127.0.0.1", local_port, 5s); });
    INFO("service proxy port: " << tunnel_conn.describe());
    REQUIRE(tunnel_conn.ok());
    {
        ssh_client ssh(std::move(tunnel_conn.fd));
        CHECK(ssh.host_key() == sshd.host_key_blob());
        ssh.authenticate(sshd.user(), sshd.user_public_key(), sshd.user_key());
        const bytes upload = random_bytes(1024 * 1024);
        exec_result r = ssh.exec("sha256sum", upload);
        INFO("stderr: " << r.err);
        CHECK(r.exit_status == 0);
        CHECK(r.out.rfind(sha256_hex(upload) + " ", 0) == 0);
    }

    // Direct connections to the device fail at once (reset by the firewall, not a timeout).
    for (int port : {open_port_number, sshd.port()}) {
        connect_result direct;
        relay_ns->run_inside([&] { direct = try_connect("10.99.0.2", port, 5s); });
        INFO("direct connection from the relay namespace to 10.99.0.2:" << port << ": " << direct.describe());
        CHECK_FALSE(direct.ok());
        CHECK(direct.error == ECONNREFUSED);
        CHECK(direct.elapsed <= 2s);
    }
    // Seen from inside the device namespace, 10.99.0.2 does listen on that port (local traffic
    // goes through lo, which the firewall lets in): the refusal above is the firewall's.
    connect_result inside;
    device_ns->run_inside([&] { inside = try_connect("10.99.0.2", open_port_number, 5s); });
    INFO("inside the device namespace: " << inside.describe());
    CHECK(inside.ok());
    // 10.99.0.0/24 exists only inside the namespaces.
    run_result root_addrs = run({"ip", "-4", "addr", "show"});
    CHECK_FALSE(contains(root_addrs.out, "10.99.0."));
    // Processes go before the namespaces they run in.
    service_proxy.reset();
    device_proxy.reset();
}
