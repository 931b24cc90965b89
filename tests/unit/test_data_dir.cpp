#include <catch2/catch.hpp>

#include "common/connection_string.hpp"
#include "relay/data_dir.hpp"
#include "relay/registry.hpp"

#include <atomic>
#include <filesystem>
#include <random>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace sg::relay;
namespace fs = std::filesystem;

namespace {

struct data_dir_temp {
    fs::path path;
    data_dir_temp()
    {
        static std::atomic<int> counter{0};
        path = fs::temp_directory_path() / ("sg-data-dir-test-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter++) + "-" + std::to_string(std::random_device{}()));
        fs::create_directories(path);
    }
    ~data_dir_temp()
    {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    data_dir_temp(const data_dir_temp&) = delete;
    data_dir_temp& operator=(const data_dir_temp&) = delete;
};

void require_listen_error(const std::string& text, const std::string& fragment)
{
    INFO("--listen " << text);
    REQUIRE_THROWS_AS(parse_listen_address(text), sg::config_error);
    REQUIRE_THROWS_WITH(parse_listen_address(text), Catch::Contains("--listen") && Catch::Contains(fragment));
}

} // namespace

// ---------------------------------------------------------------------------------------------
// parse_listen_address
// ---------------------------------------------------------------------------------------------

TEST_CASE("data_dir: parse_listen_address accepts the documented forms", "[data_dir]")
{
    auto any4 = parse_listen_address("0.0.0.0:8443");
    CHECK(any4.host == "0.0.0.0");
    CHECK(any4.port == 8443);
    CHECK(any4.is_wildcard());

    auto any6 = parse_listen_address("[::]:8443");
    CHECK(any6.host == "::"); // brackets removed
    CHECK(any6.port == 8443);
    CHECK(any6.is_wildcard());

    auto loop = parse_listen_address("127.0.0.1:0");
    CHECK(loop.host == "127.0.0.1");
    CHECK(loop.port == 0); // 0 = let the OS pick
    CHECK_FALSE(loop.is_wildcard());

    auto bare = parse_listen_address(":8443");
    CHECK(bare.host.empty());
    CHECK(bare.port == 8443);
    CHECK(bare.is_wildcard());

    auto v6 = parse_listen_address("[::1]:9000");
    CHECK(v6.host == "::1");
    CHECK(v6.port == 9000);
    CHECK_FALSE(v6.is_wildcard());

    auto max = parse_listen_address("localhost:65535");
    CHECK(max.host == "localhost");
    CHECK(max.port == 65535);

    auto scoped = parse_listen_address("[fe80::1%eth0]:443");
    CHECK(scoped.host == "fe80::1%eth0");
    CHECK(scoped.port == 443);
}

TEST_CASE("data_dir: parse_listen_address refuses malformed addresses", "[data_dir]")
{
    require_listen_error("8443", "expected address:port");
    require_listen_error("", "expected address:port");
    require_listen_error("localhost", "expected address:port");
    require_listen_error("::1:8443", "expected address:port"); // IPv6 needs brackets
    require_listen_error("a:b:8443", "expected address:port");

    require_listen_error("host:99999", "invalid port \"99999\"");
    require_listen_error("host:65536", "invalid port \"65536\"");
    require_listen_error("host:4294967296", "invalid port"); // overflows unsigned
    require_listen_error("host:", "invalid port");
    require_listen_error("host:-1", "invalid port");
    require_listen_error("host:+80", "invalid port");
    require_listen_error("host:80x", "invalid port");
    require_listen_error("host: 80", "invalid port");
    require_listen_error("host:0x50", "invalid port");

    require_listen_error("[::1]8443", "expected [address]:port");
    require_listen_error("[::1]", "expected [address]:port");
    require_listen_error("[::1", "expected [address]:port");
    require_listen_error("[::1]:", "invalid port");
    require_listen_error("[::1]:99999", "invalid port");
    require_listen_error("[::]:84x3", "invalid port");
}

// ---------------------------------------------------------------------------------------------
// public_host_name
// ---------------------------------------------------------------------------------------------

TEST_CASE("data_dir: public_host_name for wildcard listen addresses is localhost", "[data_dir]")
{
    CHECK(public_host_name("", "0.0.0.0", 8443) == "localhost:8443");
    CHECK(public_host_name("", "::", 8443) == "localhost:8443");
    CHECK(public_host_name("", "", 8443) == "localhost:8443");
    CHECK(public_host_name("", "0.0.0.0", 41234) == "localhost:41234");
}

TEST_CASE("data_dir: public_host_name omits port 443", "[data_dir]")
{
    CHECK(public_host_name("", "0.0.0.0", 443) == "localhost");
    CHECK(public_host_name("", "127.0.0.1", 443) == "127.0.0.1");
    CHECK(public_host_name("relay.example.com", "0.0.0.0", 443) == "relay.example.com");
    CHECK(public_host_name("", "127.0.0.1", 4430) == "127.0.0.1:4430");
}

TEST_CASE("data_dir: public_host_name uses a specific listen host", "[data_dir]")
{
    CHECK(public_host_name("", "127.0.0.1", 8443) == "127.0.0.1:8443");
    CHECK(public_host_name("", "192.168.1.20", 9000) == "192.168.1.20:9000");
}

TEST_CASE("data_dir: public_host_name keeps an explicit name", "[data_dir]")
{
    CHECK(public_host_name("relay.example.com", "0.0.0.0", 8443) == "relay.example.com:8443");
    // The explicit name wins over a specific listen host.
    CHECK(public_host_name("relay.example.com", "127.0.0.1", 8443) == "relay.example.com:8443");
    // With its own port it is kept exactly as written (e.g. behind a port-forward).
    CHECK(public_host_name("relay.example.com:9443", "0.0.0.0", 8443) == "relay.example.com:9443");
    // Behind a port-443 forwarder: the connection strings name no port (SDK clients need that).
    CHECK(public_host_name("relay.example.com:443", "0.0.0.0", 8443) == "relay.example.com");
    CHECK(public_host_name("[2001:db8::1]:443", "0.0.0.0", 8443) == "[2001:db8::1]");
    CHECK(public_host_name("[2001:db8::1]:9443", "0.0.0.0", 8443) == "[2001:db8::1]:9443");
}

TEST_CASE("data_dir: public_host_name brackets IPv6 literals", "[data_dir]")
{
    CHECK(public_host_name("", "::1", 8443) == "[::1]:8443");
    CHECK(public_host_name("", "::1", 443) == "[::1]");
    CHECK(public_host_name("", "2001:db8::5", 8443) == "[2001:db8::5]:8443");
    CHECK(public_host_name("::1", "0.0.0.0", 8443) == "[::1]:8443");
    CHECK(public_host_name("2001:db8::1", "0.0.0.0", 443) == "[2001:db8::1]");
}

// An explicit IPv6 name already written with brackets but no port ("[::1]") must not be wrapped
// again: the result goes into connection strings, whose parser would refuse "[[::1]]".
TEST_CASE("data_dir: public_host_name does not double-bracket a bracketed IPv6 name", "[data_dir]")
{
    CHECK(public_host_name("[::1]", "0.0.0.0", 8443) == "[::1]:8443");
    CHECK(public_host_name("[2001:db8::1]", "0.0.0.0", 443) == "[2001:db8::1]");
}

// A cluster node's --public-url host is one of its names (certificate, accepted token scopes):
// the device proxy's --relay dials it while the token names the shared --host-name.
TEST_CASE("data_dir: public_url_host is the host of --public-url, without scheme, port or brackets", "[data_dir]")
{
    CHECK(public_url_host("wss://n1:8443") == "n1");
    CHECK(public_url_host("wss://N1.Relay.Example.com:443/") == "n1.relay.example.com");
    CHECK(public_url_host("https://relay.example.com") == "relay.example.com");
    CHECK(public_url_host("n2.example.com:9443") == "n2.example.com");
    CHECK(public_url_host("wss://10.0.0.11:8443") == "10.0.0.11");
    CHECK(public_url_host("wss://[2001:db8::1]:8443") == "2001:db8::1");
    CHECK(public_url_host("").empty());
    CHECK(public_url_host("wss://").empty());
    CHECK(public_url_host("wss://n1:8443/path").empty());
}

// ---------------------------------------------------------------------------------------------
// recorded_host_name, hub_name, open_registry
// ---------------------------------------------------------------------------------------------

TEST_CASE("data_dir: recorded_host_name falls back explicit -> recorded -> localhost:8443", "[data_dir]")
{
    data_dir_temp dir;
    auto reg = open_registry(dir.path / "data");

    // Nothing recorded: the default listen address's name.
    CHECK(recorded_host_name(*reg, "") == "localhost:8443");
    // An explicit name always wins.
    CHECK(recorded_host_name(*reg, "relay.example.com") == "relay.example.com");

    // What the relay recorded at its last start.
    reg->set_setting("host_name", "relay.internal:9443");
    CHECK(recorded_host_name(*reg, "") == "relay.internal:9443");
    CHECK(recorded_host_name(*reg, "override.example.com:1") == "override.example.com:1");

    // The recorded name survives reopening (admin commands run as separate processes).
    reg.reset();
    auto again = open_registry(dir.path / "data");
    CHECK(recorded_host_name(*again, "") == "relay.internal:9443");
}

TEST_CASE("data_dir: hub_name defaults to streamgate and is persisted", "[data_dir]")
{
    data_dir_temp dir;
    auto reg = open_registry(dir.path);
    CHECK_FALSE(reg->get_setting("hub_name"));
    CHECK(hub_name(*reg) == "streamgate");
    CHECK(reg->get_setting("hub_name") == std::optional<std::string>("streamgate"));
    reg->set_setting("hub_name", "myhub");
    CHECK(hub_name(*reg) == "myhub");
}

TEST_CASE("data_dir: open_registry creates the directory 0700 and registry.db", "[data_dir]")
{
    data_dir_temp dir;
    auto nested = dir.path / "a" / "b";
    auto reg = open_registry(nested);
    REQUIRE(reg);
    CHECK(fs::is_regular_file(nested / "registry.db"));
    struct stat st {};
    REQUIRE(::stat(nested.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    CHECK(reg->find_policy("iothubowner"));
}

// ---------------------------------------------------------------------------------------------
// certificate_names
// ---------------------------------------------------------------------------------------------

TEST_CASE("data_dir: certificate_names strips the port and brackets", "[data_dir]")
{
    using names = std::vector<std::string>;
    CHECK(certificate_names("localhost:8443") == names{"localhost"});
    CHECK(certificate_names("localhost") == names{"localhost"});
    CHECK(certificate_names("relay.example.com") == names{"relay.example.com"});
    CHECK(certificate_names("relay.example.com:9443") == names{"relay.example.com"});
    CHECK(certificate_names("127.0.0.1:8443") == names{"127.0.0.1"});
    CHECK(certificate_names("[::1]:8443") == names{"::1"});
    CHECK(certificate_names("[2001:db8::1]") == names{"2001:db8::1"});
    // What public_host_name produces always maps back to the bare host.
    CHECK(certificate_names(public_host_name("", "::1", 8443)) == names{"::1"});
    CHECK(certificate_names(public_host_name("relay.example.com", "0.0.0.0", 443)) == names{"relay.example.com"});
}
