#include <catch2/catch.hpp>

#include "common/connection_string.hpp"
#include "common/crypto.hpp"
#include "common/proxy_url.hpp"

#include <map>
#include <string>

namespace {

const std::string secret = "s3cr3t-Pa55";

std::string error_of(const std::string& url) {
    try {
        sg::parse_proxy_url(url);
    } catch (const sg::config_error& e) {
        return e.what();
    }
    FAIL("no config_error for: " << url);
    return {};
}

// A fake environment for resolve_proxy_settings.
sg::environment_lookup env_of(std::map<std::string, std::string> vars) {
    return [vars = std::move(vars)](const char* name) -> std::optional<std::string> {
        auto it = vars.find(name);
        return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
}

}  // namespace

TEST_CASE("proxy URL: host, port and the default port", "[proxy]") {
    auto p = sg::parse_proxy_url("http://proxy.corp.example:8080");
    CHECK(p.host == "proxy.corp.example");
    CHECK(p.port == 8080);
    CHECK_FALSE(p.has_credentials());
    CHECK(p.authority() == "proxy.corp.example:8080");
    CHECK(p.display() == "http://proxy.corp.example:8080");

    // No port: 3128 (squid's, and the usual corporate proxy port). A trailing slash is fine.
    auto d = sg::parse_proxy_url("http://proxy.corp.example/");
    CHECK(d.port == 3128);
    // No scheme, as many HTTPS_PROXY values are written: http is assumed. Scheme is case-insensitive.
    CHECK(sg::parse_proxy_url("10.0.0.1:3129").host == "10.0.0.1");
    CHECK(sg::parse_proxy_url("10.0.0.1:3129").port == 3129);
    CHECK(sg::parse_proxy_url("  HTTP://Proxy:1  ").host == "Proxy");
}

TEST_CASE("proxy URL: IPv6 literals in brackets", "[proxy]") {
    auto p = sg::parse_proxy_url("http://[::1]:3128");
    CHECK(p.host == "::1");
    CHECK(p.port == 3128);
    CHECK(p.authority() == "[::1]:3128");
    CHECK(sg::parse_proxy_url("http://[fd00::12]").port == 3128);
    CHECK_THAT(error_of("http://::1:3128"), Catch::Contains("IPv6 addresses go in brackets"));
    CHECK_THAT(error_of("http://[::1"), Catch::Contains("invalid IPv6"));
    CHECK_THAT(error_of("http://[zz::1]:80"), Catch::Contains("invalid IPv6"));
}

TEST_CASE("proxy URL: credentials are percent-decoded and never shown", "[proxy]") {
    auto p = sg::parse_proxy_url("http://alice%40corp:" + sg::url_encode("p@ss:w/rd%") + "@proxy:3128");
    CHECK(p.user == "alice@corp");
    CHECK(p.password == "p@ss:w/rd%");
    CHECK(p.has_credentials());
    CHECK(p.display() == "http://alice%40corp:***@proxy:3128");
    CHECK(p.basic_credentials() == "Basic " + sg::base64_encode("alice@corp:p@ss:w/rd%"));

    // An unencoded '@' in the password: the last '@' ends the credentials.
    auto raw = sg::parse_proxy_url("http://bob:" + secret + "@x@proxy");
    CHECK(raw.password == secret + "@x");
    CHECK(raw.host == "proxy");
    CHECK(raw.display().find(secret) == std::string::npos);

    // A user without a password.
    auto u = sg::parse_proxy_url("http://carol@proxy:1");
    CHECK(u.user == "carol");
    CHECK(u.password.empty());
    CHECK(u.display() == "http://carol@proxy:1");

    std::string bad = error_of("http://bob:" + secret + "%zz@proxy:3128");
    CHECK_THAT(bad, Catch::Contains("invalid %-escape in its password"));
    CHECK(bad.find(secret) == std::string::npos);
}

TEST_CASE("proxy URL: what is refused", "[proxy]") {
    CHECK_THAT(error_of("https://proxy:443"), Catch::Contains("https:// proxies (TLS to the proxy) are not supported"));
    CHECK_THAT(error_of("socks5://proxy:1080"), Catch::Contains("unsupported proxy scheme \"socks5\""));
    CHECK_THAT(error_of("http://proxy:3128/path"), Catch::Contains("without a path"));
    CHECK_THAT(error_of("http://proxy:3128?x=1"), Catch::Contains("without a path"));
    CHECK_THAT(error_of("http://proxy:0"), Catch::Contains("invalid port"));
    CHECK_THAT(error_of("http://proxy:65536"), Catch::Contains("invalid port"));
    CHECK_THAT(error_of("http://proxy:31a"), Catch::Contains("invalid port"));
    CHECK_THAT(error_of("http://proxy:"), Catch::Contains("invalid port"));
    CHECK_THAT(error_of("http://:3128"), Catch::Contains("no host"));
    CHECK_THAT(error_of("http://user:" + secret + "@"), Catch::Contains("no host"));
    CHECK_THAT(error_of("http://pro xy:1"), Catch::Contains("invalid host name"));
    // No message echoes the password.
    for (const auto& url : {"https://u:" + secret + "@p", "http://u:" + secret + "@p:99999", "http://u:" + secret + "@p/x"})
        CHECK(error_of(url).find(secret) == std::string::npos);
}

TEST_CASE("NO_PROXY matching", "[proxy]") {
    sg::no_proxy_list list(" .corp.example, internal.example ,10.1.2.3 [fd00::1]:443,relay.test:8443,,");
    // Suffix rules: the domain itself and its subdomains, with or without the leading dot.
    CHECK(list.matches("corp.example"));
    CHECK(list.matches("relay.corp.example"));
    CHECK(list.matches("RELAY.Corp.Example."));
    CHECK(list.matches("internal.example"));
    CHECK(list.matches("a.b.internal.example"));
    CHECK_FALSE(list.matches("notinternal.example"));
    CHECK_FALSE(list.matches("corp.example.org"));
    CHECK_FALSE(list.matches("example"));
    // A port on an entry is ignored.
    CHECK(list.matches("relay.test"));
    // IP literals match exactly, never as a suffix.
    CHECK(list.matches("10.1.2.3"));
    CHECK_FALSE(list.matches("110.1.2.3"));
    CHECK_FALSE(sg::no_proxy_list("0.0.1").matches("127.0.0.1"));
    CHECK(list.matches("fd00::1"));
    CHECK(list.matches("[FD00::1]"));
    CHECK_FALSE(list.matches("fd00::2"));
    CHECK(sg::no_proxy_list("::1").matches("::1"));
    // Nothing is bypassed by default, not even loopback.
    CHECK_FALSE(sg::no_proxy_list("").matches("localhost"));
    CHECK(sg::no_proxy_list("").empty());
    CHECK_FALSE(list.matches(""));
    // "*" alone bypasses everything.
    CHECK(sg::no_proxy_list("*").matches("anything.example"));
    CHECK(sg::no_proxy_list("a.example, *").matches("127.0.0.1"));
}

TEST_CASE("proxy settings: --proxy wins over the environment, NO_PROXY applies to both", "[proxy]") {
    auto env = env_of({{"HTTPS_PROXY", "http://env-upper:1"}, {"NO_PROXY", "bypass.example"}});

    auto from_env = sg::resolve_proxy_settings(std::nullopt, std::nullopt, env);
    REQUIRE(from_env.proxy);
    CHECK(from_env.proxy->host == "env-upper");
    CHECK(from_env.for_host("relay.example")->host == "env-upper");
    CHECK_FALSE(from_env.for_host("relay.bypass.example"));

    // The lower-case variables come first (as curl reads them); empty ones count as unset.
    auto lower = env_of({{"https_proxy", "http://env-lower:2"}, {"HTTPS_PROXY", "http://env-upper:1"},
                         {"no_proxy", ""}, {"NO_PROXY", "relay.example"}});
    auto l = sg::resolve_proxy_settings(std::nullopt, std::nullopt, lower);
    CHECK(l.proxy->host == "env-lower");
    CHECK_FALSE(l.for_host("relay.example"));

    auto cli = sg::resolve_proxy_settings(std::string("http://cli:3"), std::nullopt, env);
    CHECK(cli.proxy->host == "cli");
    CHECK_FALSE(cli.for_host("bypass.example"));  // the environment's NO_PROXY still applies

    // --proxy "" (or blanks): direct, whatever the environment says.
    CHECK_FALSE(sg::resolve_proxy_settings(std::string(""), std::nullopt, env).proxy);
    CHECK_FALSE(sg::resolve_proxy_settings(std::string(" "), std::nullopt, env).for_host("relay.example"));
    // --no-proxy replaces NO_PROXY; '*' bypasses the proxy for every host.
    auto replaced = sg::resolve_proxy_settings(std::nullopt, std::string("other.example"), env);
    CHECK(replaced.for_host("bypass.example"));
    CHECK_FALSE(replaced.for_host("other.example"));
    CHECK_FALSE(sg::resolve_proxy_settings(std::nullopt, std::string("*"), env).for_host("relay.example"));

    // No variables, no option: direct.
    CHECK_FALSE(sg::resolve_proxy_settings(std::nullopt, std::nullopt, env_of({})).proxy);

    // A bad value names where it came from, never the password.
    auto bad = env_of({{"HTTPS_PROXY", "https://u:" + secret + "@p"}});
    try {
        sg::resolve_proxy_settings(std::nullopt, std::nullopt, bad);
        FAIL("no config_error");
    } catch (const sg::config_error& e) {
        CHECK_THAT(e.what(), Catch::StartsWith("HTTPS_PROXY: https:// proxies"));
        CHECK(std::string(e.what()).find(secret) == std::string::npos);
    }
    CHECK_THROWS_WITH(sg::resolve_proxy_settings(std::string("ftp://p"), std::nullopt, env),
                      Catch::StartsWith("--proxy: unsupported proxy scheme"));
}
