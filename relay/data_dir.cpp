#include "relay/data_dir.hpp"
#include "relay/x509_auth.hpp"

#include <algorithm>
#include <charconv>
#include <system_error>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/connection_string.hpp"
#include "common/crypto.hpp"

namespace sg::relay {

listen_address parse_listen_address(const std::string& text)
{
    listen_address out;
    std::string port_text;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string::npos || close + 1 >= text.size() || text[close + 1] != ':')
            throw config_error("--listen: expected [address]:port, got \"" + text + "\"");
        out.host = text.substr(1, close - 1);
        port_text = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string::npos || text.find(':') != colon)
            throw config_error("--listen: expected address:port, got \"" + text + "\"");
        out.host = text.substr(0, colon);
        port_text = text.substr(colon + 1);
    }
    unsigned port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || p != port_text.data() + port_text.size() || port > 65535)
        throw config_error("--listen: invalid port \"" + port_text + "\"");
    out.port = static_cast<std::uint16_t>(port);
    return out;
}

bool names_port(const std::string& host)
{
    if (!host.empty() && host.front() == '[')
        return host.find("]:") != std::string::npos;
    return std::count(host.begin(), host.end(), ':') == 1; // more colons: a bare IPv6 literal
}

namespace {
// "relay.example.com:443" -> "relay.example.com"; any other name as it is.
std::string without_port_443(const std::string& host)
{
    return names_port(host) && host.ends_with(":443") ? host.substr(0, host.size() - 4) : host;
}
} // namespace

std::string public_host_name(const std::string& explicit_name, const std::string& listen_host, std::uint16_t port)
{
    std::string host = explicit_name;
    if (host.empty()) {
        listen_address l{listen_host, port};
        host = l.is_wildcard() ? "localhost" : listen_host;
    }
    // A name given with its own port is kept as written, but for 443: connection strings never name
    // it (the Azure IoT SDKs take HostName as a bare host), e.g. behind a port-443 forwarder.
    if (names_port(host))
        return without_port_443(host);
    if (host.front() != '[' && host.find(':') != std::string::npos)
        host = "[" + host + "]";
    return port == 443 ? host : host + ":" + std::to_string(port);
}

std::unique_ptr<registry> open_registry(const std::filesystem::path& data_dir, const std::string& registry_url)
{
    if (!registry_url.empty() && !is_postgres_url(registry_url))
        throw config_error("--registry: expected postgresql://user:password@host:port/database (or nothing for "
                           "the data directory's SQLite file), got \"" + redact_database_url(registry_url) + "\"");
    std::error_code ec;
    std::filesystem::create_directories(data_dir, ec);
    if (ec)
        throw std::runtime_error("cannot create data directory " + data_dir.string() + ": " + ec.message());
    ::chmod(data_dir.c_str(), 0700);
    auto reg = registry_url.empty() ? open_sqlite_registry(data_dir / "registry.db") : open_postgres_registry(registry_url);
    import_legacy_device_cas(*reg, data_dir); // once, on upgrade from device-cas/*.pem
    return reg;
}

std::string recorded_host_name(registry& reg, const std::string& explicit_name)
{
    if (!explicit_name.empty())
        return without_port_443(explicit_name);
    if (auto recorded = reg.get_setting("host_name"))
        return *recorded;
    return "localhost:8443";
}

std::string hub_name(registry& reg)
{
    if (auto name = reg.get_setting("hub_name"))
        return *name;
    reg.set_setting("hub_name", "streamgate");
    return "streamgate";
}

std::vector<std::string> certificate_names(const std::string& host_name)
{
    connection_string probe;
    probe.host_name = host_name;
    return {probe.host()};
}

std::string public_url_host(const std::string& public_url)
{
    std::string_view authority = public_url;
    for (std::string_view scheme : {"wss://", "https://"})
        if (authority.starts_with(scheme))
            authority.remove_prefix(scheme.size());
    while (authority.ends_with("/"))
        authority.remove_suffix(1);
    if (authority.empty() || authority.find('/') != std::string_view::npos)
        return {};
    connection_string probe;
    probe.host_name = std::string(authority);
    return to_lower(probe.host());
}

tls_files ensure_certificates(const std::filesystem::path& data_dir, const std::vector<std::string>& names)
{
    // The relay and admin commands may start at the same moment: one of them issues, the other
    // waits and then finds the files in place.
    int fd = ::open((data_dir / ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        throw std::runtime_error("cannot open " + (data_dir / ".lock").string() + ": " + std::strerror(errno));
    ::flock(fd, LOCK_EX);
    try {
        auto files = ensure_relay_certificates(data_dir, names);
        ::close(fd);
        return files;
    } catch (...) {
        ::close(fd);
        throw;
    }
}

} // namespace sg::relay
