#include <catch2/catch.hpp>

#include "common/connection_string.hpp"
#include "relay/ip_filter.hpp"

using namespace sg::relay;
namespace ip = boost::asio::ip;

TEST_CASE("ip filter: rules parse and reject what they should", "[ip_filter]")
{
    CHECK_THROWS_AS(parse_ip_rule("drop 10.0.0.0/8"), sg::config_error);
    CHECK_THROWS_AS(parse_ip_rule("accept 10.0.0.0/33"), sg::config_error);
    CHECK_THROWS_AS(parse_ip_rule("accept nothing"), sg::config_error);
    CHECK_THROWS_AS(parse_ip_rule("accept"), sg::config_error);
    CHECK_THROWS_AS(parse_ip_rule("reject ::/129"), sg::config_error);
    CHECK(parse_ip_rule("reject 6.6.6.6").prefix == 32);
}

TEST_CASE("ip filter: the first matching rule decides, none matching accepts", "[ip_filter]")
{
    ip_filter filter({parse_ip_rule("accept 10.1.0.0/16"), parse_ip_rule("reject 10.0.0.0/8"),
                      parse_ip_rule("reject 2001:db8::/32"), parse_ip_rule("reject 192.168.1.7")});
    CHECK_FALSE(filter.rejects(ip::make_address("10.1.2.3")));
    CHECK(filter.rejects(ip::make_address("10.2.2.3")) == std::optional<std::string>("reject 10.0.0.0/8"));
    CHECK(filter.rejects(ip::make_address("2001:db8:1::5")));
    CHECK_FALSE(filter.rejects(ip::make_address("2001:db9::5")));
    CHECK(filter.rejects(ip::make_address("192.168.1.7")));
    CHECK_FALSE(filter.rejects(ip::make_address("192.168.1.8")));
    CHECK_FALSE(filter.rejects(ip::make_address("127.0.0.1")));
    // A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6 addresses.
    CHECK(filter.rejects(ip::make_address("::ffff:10.2.2.3")));
    CHECK_FALSE(filter.rejects(ip::make_address("::ffff:10.1.2.3")));
}

TEST_CASE("ip filter: prefix lengths that are not byte aligned", "[ip_filter]")
{
    ip_filter filter({parse_ip_rule("reject 192.168.100.0/22")});
    CHECK(filter.rejects(ip::make_address("192.168.100.1")));
    CHECK(filter.rejects(ip::make_address("192.168.103.255")));
    CHECK_FALSE(filter.rejects(ip::make_address("192.168.104.0")));
    CHECK_FALSE(filter.rejects(ip::make_address("192.168.99.255")));
    ip_filter everything({parse_ip_rule("reject 0.0.0.0/0")});
    CHECK(everything.rejects(ip::make_address("8.8.8.8")));
    CHECK_FALSE(everything.rejects(ip::make_address("::1")));
}
