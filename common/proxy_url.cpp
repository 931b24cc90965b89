#include "common/proxy_url.hpp"

#include <algorithm>
#include <cstdlib>
#include "common/connection_string.hpp"
#include "common/crypto.hpp"

namespace sg {

namespace {

std::string_view trim(std::string_view s)
{
    const char* ws = " \t\r\n";
    auto b = s.find_first_not_of(ws);
    if (b == std::string_view::npos)
        return {};
    return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool host_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_';
}

bool ipv6_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
}

// An IP literal is matched exactly, never as a suffix: "0.0.1" must not bypass 127.0.0.1.
bool looks_like_ip(std::string_view host)
{
    if (host.find(':') != std::string_view::npos)
        return true;
    return !host.empty() && host.find_first_not_of("0123456789.") == std::string_view::npos;
}

std::uint16_t parse_port(std::string_view text)
{
    if (text.empty() || text.size() > 5 || text.find_first_not_of("0123456789") != std::string_view::npos)
        throw config_error("the proxy URL has an invalid port (expected 1..65535)");
    unsigned v = 0;
    for (char c : text)
        v = v * 10 + static_cast<unsigned>(c - '0');
    if (v == 0 || v > 65535)
        throw config_error("the proxy URL has an invalid port (expected 1..65535)");
    return static_cast<std::uint16_t>(v);
}

std::string decode_credential(std::string_view text, const char* what)
{
    auto decoded = url_decode(text);
    if (!decoded)
        throw config_error(std::string("the proxy URL has an invalid %-escape in its ") + what);
    return *decoded;
}

} // namespace

std::string http_proxy::authority() const
{
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return h + ":" + std::to_string(port);
}

std::string http_proxy::display() const
{
    std::string credentials;
    if (has_credentials())
        credentials = url_encode(user) + (password.empty() ? "" : ":***") + "@";
    return "http://" + credentials + authority();
}

std::string http_proxy::basic_credentials() const { return "Basic " + base64_encode(user + ":" + password); }

http_proxy parse_proxy_url(std::string_view url)
{
    url = trim(url);
    if (auto sep = url.find("://"); sep != std::string_view::npos) {
        std::string scheme = to_lower(url.substr(0, sep));
        if (scheme == "https")
            throw config_error("https:// proxies (TLS to the proxy) are not supported; use http://host:port "
                               "(the connection to the relay inside the tunnel is TLS either way)");
        if (scheme != "http")
            throw config_error("unsupported proxy scheme \"" + scheme + "\" (only http:// proxies are supported)");
        url.remove_prefix(sep + 3);
    }
    auto end = url.find_first_of("/?#");
    std::string_view authority = url.substr(0, end);
    if (end != std::string_view::npos && url.substr(end) != "/")
        throw config_error("the proxy URL must be http://[user:password@]host[:port] without a path or query "
                           "(a / ? # or @ in the user or password must be percent-encoded)");

    http_proxy out;
    if (auto at = authority.rfind('@'); at != std::string_view::npos) {
        std::string_view userinfo = authority.substr(0, at);
        authority.remove_prefix(at + 1);
        auto colon = userinfo.find(':');
        out.user = decode_credential(userinfo.substr(0, colon), "user name");
        if (colon != std::string_view::npos)
            out.password = decode_credential(userinfo.substr(colon + 1), "password");
    }

    std::string_view rest;
    if (!authority.empty() && authority.front() == '[') {
        auto close = authority.find(']');
        if (close == std::string_view::npos || close == 1)
            throw config_error("the proxy URL has an invalid IPv6 address (expected [address]:port)");
        std::string_view inside = authority.substr(1, close - 1);
        for (char c : inside)
            if (!ipv6_char(c))
                throw config_error("the proxy URL has an invalid IPv6 address (expected [address]:port)");
        out.host = std::string(inside);
        rest = authority.substr(close + 1);
    } else {
        if (std::count(authority.begin(), authority.end(), ':') > 1)
            throw config_error("the proxy URL has an invalid host name (IPv6 addresses go in brackets)");
        auto colon = authority.find(':');
        std::string_view name = authority.substr(0, colon);
        if (name.empty())
            throw config_error("the proxy URL has no host (expected http://[user:password@]host[:port])");
        for (char c : name)
            if (!host_char(c))
                throw config_error("the proxy URL has an invalid host name (IPv6 addresses go in brackets)");
        out.host = std::string(name);
        rest = colon == std::string_view::npos ? std::string_view{} : authority.substr(colon);
    }
    if (!rest.empty()) {
        if (rest.front() != ':')
            throw config_error("the proxy URL has junk after its host");
        out.port = parse_port(rest.substr(1));
    }
    return out;
}

no_proxy_list::no_proxy_list(std::string_view text)
{
    while (!text.empty()) {
        auto sep = text.find_first_of(", \t");
        std::string entry = to_lower(trim(text.substr(0, sep)));
        text = sep == std::string_view::npos ? std::string_view{} : text.substr(sep + 1);
        if (entry == "*") {
            all_ = true;
            continue;
        }
        if (!entry.empty() && entry.front() == '[') {
            auto close = entry.find(']');
            entry = entry.substr(1, close == std::string::npos ? std::string::npos : close - 1);
        } else if (std::count(entry.begin(), entry.end(), ':') == 1) {
            entry.erase(entry.find(':')); // host:port; an IPv6 literal has two colons or more
        }
        while (!entry.empty() && entry.front() == '.')
            entry.erase(0, 1);
        while (!entry.empty() && entry.back() == '.')
            entry.pop_back();
        if (!entry.empty())
            entries_.push_back(std::move(entry));
    }
}

bool no_proxy_list::matches(std::string_view host_text) const
{
    if (all_)
        return true;
    std::string host = to_lower(host_text);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    while (!host.empty() && host.back() == '.')
        host.pop_back();
    if (host.empty())
        return false;
    bool ip = looks_like_ip(host);
    for (const auto& entry : entries_) {
        if (host == entry)
            return true;
        if (!ip && host.size() > entry.size() && host.ends_with(entry) && host[host.size() - entry.size() - 1] == '.')
            return true;
    }
    return false;
}

std::optional<http_proxy> proxy_settings::for_host(std::string_view host) const
{
    if (!proxy || bypass.matches(host))
        return std::nullopt;
    return proxy;
}

std::optional<std::string> process_environment(const char* name)
{
    const char* value = std::getenv(name);
    return value ? std::optional<std::string>(value) : std::nullopt;
}

proxy_settings resolve_proxy_settings(const std::optional<std::string>& cli_proxy,
                                      const std::optional<std::string>& cli_no_proxy, const environment_lookup& env)
{
    // Lower case first, as curl reads them; a variable set to "" counts as unset.
    auto first_set = [&](const char* lower, const char* upper) -> std::pair<std::optional<std::string>, const char*> {
        for (const char* name : {lower, upper})
            if (auto value = env(name); value && !trim(*value).empty())
                return {value, name};
        return {std::nullopt, nullptr};
    };

    proxy_settings settings;
    if (cli_no_proxy)
        settings.bypass = no_proxy_list(*cli_no_proxy);
    else if (auto found = first_set("no_proxy", "NO_PROXY"); found.first)
        settings.bypass = no_proxy_list(*found.first);

    std::optional<std::string> url;
    std::string source = "--proxy";
    if (cli_proxy) {
        url = *cli_proxy;
    } else if (auto found = first_set("https_proxy", "HTTPS_PROXY"); found.first) {
        url = found.first;
        source = found.second;
    }
    if (!url || trim(*url).empty())
        return settings;
    try {
        settings.proxy = parse_proxy_url(*url);
    } catch (const config_error& e) {
        throw config_error(source + ": " + e.what());
    }
    return settings;
}

} // namespace sg
