#pragma once
// --proxy and --no-proxy for every client program (the two proxies and the examples): two lines in
// a main, one meaning everywhere. Header-only over CLI11; no Asio.
#include <optional>
#include <string>
#include <CLI/CLI.hpp>
#include "common/proxy_url.hpp"

namespace sg {

struct proxy_cli {
    std::string proxy, no_proxy;
    CLI::Option* proxy_option = nullptr;
    CLI::Option* no_proxy_option = nullptr;

    // The settings from these options and the environment (see resolve_proxy_settings).
    // Throws config_error.
    proxy_settings resolve() const
    {
        auto given = [](const CLI::Option* o, const std::string& value) {
            return o && o->count() > 0 ? std::optional<std::string>(value) : std::nullopt;
        };
        return resolve_proxy_settings(given(proxy_option, proxy), given(no_proxy_option, no_proxy));
    }
};

inline void add_proxy_options(CLI::App& app, proxy_cli& cli)
{
    cli.proxy_option = app.add_option(
        "--proxy", cli.proxy,
        "Reach the relay through this HTTP proxy (HTTP CONNECT): http://[user:password@]host[:port], port 3128 "
        "when omitted, user and password percent-encoded. Default: env https_proxy / HTTPS_PROXY. "
        "--proxy \"\" connects directly, ignoring the environment");
    cli.no_proxy_option = app.add_option(
        "--no-proxy", cli.no_proxy,
        "Relay hosts to reach directly, comma-separated: example.com (and its subdomains), IP addresses, or * for "
        "all. Default: env no_proxy / NO_PROXY");
}

} // namespace sg
