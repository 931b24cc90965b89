#pragma once
// The outbound HTTP proxy the clients dial the relay through (HTTP CONNECT), as given by
// --proxy / --no-proxy or the HTTPS_PROXY / NO_PROXY environment variables. Plain C++: parsing
// and matching only; the tunnel itself is in client.cpp.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sg {

struct http_proxy {
    std::string host;          // name or IP literal (IPv6 without brackets)
    std::uint16_t port = 3128; // when the URL names none: the port squid and most corporate proxies use
    std::string user;          // percent-decoded; empty = no Proxy-Authorization
    std::string password;      // percent-decoded; never logged or printed

    bool has_credentials() const { return !user.empty() || !password.empty(); }
    // host:port as it goes into messages and the CONNECT request ("[::1]:3128").
    std::string authority() const;
    // "http://user:***@host:port": the URL with the password masked, for logs.
    std::string display() const;
    // "Basic base64(user:password)" for Proxy-Authorization.
    std::string basic_credentials() const;
};

// "http://[user[:password]@]host[:port][/]" (the scheme may be omitted, as in many HTTPS_PROXY
// values). User and password are percent-decoded. Throws config_error naming what is wrong,
// never echoing the password; https:// (TLS to the proxy) and other schemes are refused.
http_proxy parse_proxy_url(std::string_view url);

// NO_PROXY: comma- (or space-) separated entries, each "*" (everything), a host name (also
// matching its subdomains; a leading dot is ignored, so ".example.com" and "example.com" both match
// "example.com" and "a.example.com"), or an IP literal (exact match; IPv6 with or without brackets).
// A ":port" on an entry is ignored. Case-insensitive. Nothing is bypassed by default, not even
// localhost.
class no_proxy_list {
public:
    no_proxy_list() = default;
    explicit no_proxy_list(std::string_view text);
    bool matches(std::string_view host) const;
    bool empty() const { return entries_.empty() && !all_; }

private:
    std::vector<std::string> entries_;
    bool all_ = false;
};

// Which proxy, if any, a process uses to reach the relay.
struct proxy_settings {
    std::optional<http_proxy> proxy; // none: connect directly
    no_proxy_list bypass;

    // The proxy to use for a connection to `host`, or none to connect directly.
    std::optional<http_proxy> for_host(std::string_view host) const;
};

// Looks an environment variable up (nullopt when unset); injectable for tests.
using environment_lookup = std::function<std::optional<std::string>(const char*)>;
std::optional<std::string> process_environment(const char* name);

// Resolves the settings the way curl does:
//   proxy:  --proxy URL, else https_proxy, else HTTPS_PROXY; `--proxy ""` means no proxy at all
//           (the environment is ignored);
//   bypass: --no-proxy LIST, else no_proxy, else NO_PROXY (`--no-proxy '*'` also disables the proxy).
// cli_proxy / cli_no_proxy are nullopt when the option was not given. Throws config_error.
proxy_settings resolve_proxy_settings(const std::optional<std::string>& cli_proxy,
                                      const std::optional<std::string>& cli_no_proxy,
                                      const environment_lookup& env = process_environment);

} // namespace sg
