#include "relay/ip_filter.hpp"

#include <array>
#include <charconv>
#include "common/connection_string.hpp"

namespace sg::relay {
namespace ip = boost::asio::ip;

namespace {

// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, seen on dual-stack listeners) match IPv4 rules.
ip::address normalize(const ip::address& a)
{
    if (a.is_v6() && a.to_v6().is_v4_mapped())
        return ip::make_address_v4(ip::v4_mapped, a.to_v6());
    return a;
}

bool prefix_matches(const ip::address& a, const ip::address& network, unsigned prefix)
{
    if (a.is_v4() != network.is_v4())
        return false;
    auto bytes_of = [](const ip::address& x) {
        std::array<unsigned char, 16> out{};
        if (x.is_v4()) {
            auto b = x.to_v4().to_bytes();
            std::copy(b.begin(), b.end(), out.begin());
        } else {
            auto b = x.to_v6().to_bytes();
            std::copy(b.begin(), b.end(), out.begin());
        }
        return out;
    };
    auto lhs = bytes_of(a), rhs = bytes_of(network);
    for (unsigned bit = 0; bit < prefix; bit += 8) {
        unsigned bits = std::min(8u, prefix - bit);
        unsigned char mask = static_cast<unsigned char>(0xFF << (8 - bits));
        if ((lhs[bit / 8] & mask) != (rhs[bit / 8] & mask))
            return false;
    }
    return true;
}

} // namespace

ip_rule parse_ip_rule(const std::string& text)
{
    auto space = text.find(' ');
    if (space == std::string::npos)
        throw config_error("IP filter rule \"" + text + "\": expected \"accept CIDR\" or \"reject CIDR\"");
    std::string action = text.substr(0, space), range = text.substr(text.find_first_not_of(' ', space));
    ip_rule rule;
    rule.text = text;
    if (action == "accept" || action == "allow")
        rule.accept = true;
    else if (action == "reject" || action == "block")
        rule.accept = false;
    else
        throw config_error("IP filter rule \"" + text + "\": action must be accept or reject");
    auto slash = range.find('/');
    boost::system::error_code ec;
    rule.network = ip::make_address(range.substr(0, slash), ec);
    if (ec)
        throw config_error("IP filter rule \"" + text + "\": not an IP address");
    unsigned max = rule.network.is_v4() ? 32 : 128;
    rule.prefix = max;
    if (slash != std::string::npos) {
        auto digits = range.substr(slash + 1);
        auto [p, e] = std::from_chars(digits.data(), digits.data() + digits.size(), rule.prefix);
        if (e != std::errc{} || p != digits.data() + digits.size() || digits.empty() || rule.prefix > max)
            throw config_error("IP filter rule \"" + text + "\": invalid prefix length");
    }
    return rule;
}

std::optional<std::string> ip_filter::rejects(const ip::address& address) const
{
    auto a = normalize(address);
    for (const auto& rule : rules_)
        if (prefix_matches(a, rule.network, rule.prefix))
            return rule.accept ? std::nullopt : std::optional<std::string>(rule.text);
    return std::nullopt;
}

} // namespace sg::relay
