#pragma once
// IP filter rules, applied in order to every connection before its TLS handshake; the first
// rule that matches decides. No rule matching means accept (as IoT Hub's default 0.0.0.0/0).
#include <optional>
#include <string>
#include <vector>
#include <boost/asio/ip/address.hpp>

namespace sg::relay {

struct ip_rule {
    bool accept = true;
    boost::asio::ip::address network;
    unsigned prefix = 0;
    std::string text; // as configured, for logs
};

// "accept 10.0.0.0/8", "reject 2001:db8::/32", "reject 6.6.6.6" (a single address).
// Throws config_error naming the problem.
ip_rule parse_ip_rule(const std::string& text);

class ip_filter {
public:
    ip_filter() = default;
    explicit ip_filter(std::vector<ip_rule> rules) : rules_(std::move(rules)) {}
    // The rule that rejected address, or nullopt when accepted.
    std::optional<std::string> rejects(const boost::asio::ip::address& address) const;
    bool empty() const { return rules_.empty(); }

private:
    std::vector<ip_rule> rules_;
};

} // namespace sg::relay
