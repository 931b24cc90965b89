#include <catch2/catch.hpp>

#include "common/device_id.hpp"

#include <string>

using namespace std::string_literals;

TEST_CASE("device ids accept IoT Hub's character set", "[device_id]") {
    CHECK(sg::is_valid_device_id("dev1"));
    CHECK(sg::is_valid_device_id("A"));
    CHECK(sg::is_valid_device_id("my-device.01"));
    CHECK(sg::is_valid_device_id("-.+%_#*?!(),:=@$"));
    CHECK(sg::is_valid_device_id("..."));  // only "." and ".." themselves navigate
    CHECK(sg::is_valid_device_id(".hidden"));
    CHECK(sg::is_valid_device_id(std::string(128, 'x')));
}

TEST_CASE("device ids reject everything else", "[device_id]") {
    CHECK_FALSE(sg::is_valid_device_id(""));
    CHECK_FALSE(sg::is_valid_device_id(std::string(129, 'x')));
    CHECK_FALSE(sg::is_valid_device_id("."));
    CHECK_FALSE(sg::is_valid_device_id(".."));
    CHECK_FALSE(sg::is_valid_device_id("a/b"));
    CHECK_FALSE(sg::is_valid_device_id("/"));
    CHECK_FALSE(sg::is_valid_device_id("a b"));
    CHECK_FALSE(sg::is_valid_device_id("a\0b"s));
    CHECK_FALSE(sg::is_valid_device_id("\0"s));
    CHECK_FALSE(sg::is_valid_device_id("d\xc3\xa9v"));
    CHECK_FALSE(sg::is_valid_device_id("a\\b"));
    CHECK_FALSE(sg::is_valid_device_id("a;b"));  // would split a connection string
    CHECK_FALSE(sg::is_valid_device_id("a\tb"));
    CHECK_FALSE(sg::is_valid_device_id("a\nb"));
    CHECK_FALSE(sg::is_valid_device_id("a&b"));
    CHECK_FALSE(sg::is_valid_device_id("a'b"));
    CHECK_FALSE(sg::is_valid_device_id("a\"b"));
    CHECK_FALSE(sg::is_valid_device_id("a<b>"));
}

TEST_CASE("stream names use the same characters, up to 64", "[device_id]") {
    CHECK(sg::is_valid_stream_name("ssh"));
    CHECK(sg::is_valid_stream_name("rdp-3389"));
    CHECK(sg::is_valid_stream_name(std::string(64, 's')));
    CHECK_FALSE(sg::is_valid_stream_name(std::string(65, 's')));
    CHECK_FALSE(sg::is_valid_stream_name(""));
    CHECK_FALSE(sg::is_valid_stream_name("."));
    CHECK_FALSE(sg::is_valid_stream_name(".."));
    CHECK_FALSE(sg::is_valid_stream_name("a/b"));
    CHECK_FALSE(sg::is_valid_stream_name("a b"));
    CHECK_FALSE(sg::is_valid_stream_name("\xc3\xa9"));
}
