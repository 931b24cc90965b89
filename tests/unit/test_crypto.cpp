#include <catch2/catch.hpp>

#include "common/crypto.hpp"

#include <set>
#include <string>

using namespace std::string_literals;

TEST_CASE("base64_encode matches the RFC 4648 vectors", "[crypto]") {
    CHECK(sg::base64_encode("") == "");
    CHECK(sg::base64_encode("f") == "Zg==");
    CHECK(sg::base64_encode("fo") == "Zm8=");
    CHECK(sg::base64_encode("foo") == "Zm9v");
    CHECK(sg::base64_encode("foob") == "Zm9vYg==");
    CHECK(sg::base64_encode("fooba") == "Zm9vYmE=");
    CHECK(sg::base64_encode("foobar") == "Zm9vYmFy");
}

TEST_CASE("base64_decode inverts base64_encode for every length and byte", "[crypto]") {
    std::string all;
    for (int i = 0; i < 256; ++i) all.push_back(static_cast<char>(i));
    for (std::size_t n = 0; n <= all.size(); n += (n < 40 ? 1 : 37)) {
        std::string bytes = all.substr(all.size() - n);
        auto decoded = sg::base64_decode(sg::base64_encode(bytes));
        REQUIRE(decoded);
        CHECK(*decoded == bytes);
    }
    CHECK(sg::base64_decode("Zm9vYmE=") == std::optional<std::string>("fooba"));
    CHECK(sg::base64_decode("Zg==") == std::optional<std::string>("f"));
}

TEST_CASE("base64_decode is strict", "[crypto]") {
    CHECK_FALSE(sg::base64_decode("Zg"));         // missing padding
    CHECK_FALSE(sg::base64_decode("Zg="));        // length not a multiple of 4
    CHECK_FALSE(sg::base64_decode("Zm9vY"));      // length
    CHECK_FALSE(sg::base64_decode("Zm9v\n"));     // whitespace
    CHECK_FALSE(sg::base64_decode("Zm 9v"));      // whitespace
    CHECK_FALSE(sg::base64_decode("Zm9-"));       // URL-safe alphabet
    CHECK_FALSE(sg::base64_decode("Zm9_"));       // URL-safe alphabet
    CHECK_FALSE(sg::base64_decode("Zm9\xff"));    // non-ASCII
    CHECK_FALSE(sg::base64_decode("Zm9v\0\0\0\0"s)); // NUL bytes
    CHECK_FALSE(sg::base64_decode("=Zm9"));       // padding first
    CHECK_FALSE(sg::base64_decode("Zm=v"));       // padding in the middle
    CHECK_FALSE(sg::base64_decode("Zg=a"));       // data after padding
    CHECK_FALSE(sg::base64_decode("Zg==Zm9v"));   // padding before more data
    CHECK_FALSE(sg::base64_decode("Z==="));       // three padding characters
    CHECK_FALSE(sg::base64_decode("===="));       // only padding
    CHECK_FALSE(sg::base64_decode("Zh=="));       // non-zero leftover bits (canonical: Zg==)
    CHECK_FALSE(sg::base64_decode("Zm9="));       // non-zero leftover bits (canonical: Zm8=)
    CHECK(sg::base64_decode("") == std::optional<std::string>(""));
}

TEST_CASE("base64url_encode uses - and _ and no padding", "[crypto]") {
    CHECK(sg::base64_encode("\xfb\xff"s) == "+/8=");
    CHECK(sg::base64url_encode("\xfb\xff"s) == "-_8");
    CHECK(sg::base64url_encode("foobar") == "Zm9vYmFy");
    CHECK(sg::base64url_encode("f") == "Zg");
}

TEST_CASE("hmac_sha256 matches RFC 4231", "[crypto]") {
    // Test case 1
    CHECK(sg::hex_upper(sg::hmac_sha256(std::string(20, '\x0b'), "Hi There")) ==
          "B0344C61D8DB38535CA8AFCEAF0BF12B881DC200C9833DA726E9376C2E32CFF7");
    // Test case 2
    CHECK(sg::hex_upper(sg::hmac_sha256("Jefe", "what do ya want for nothing?")) ==
          "5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843");
    // Test case 6: key longer than the block size
    CHECK(sg::hex_upper(sg::hmac_sha256(std::string(131, '\xaa'),
                                        "Test Using Larger Than Block-Size Key - Hash Key First")) ==
          "60E431591EE0B67F0D8A26AACBF5B77F8E0BC6213728C5140546040F0EE37F54");
    CHECK(sg::hmac_sha256("", "").size() == 32);
}

TEST_CASE("sha256 matches FIPS 180-2", "[crypto]") {
    CHECK(sg::hex_upper(sg::sha256("abc")) == "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD");
    CHECK(sg::hex_upper(sg::sha256("")) == "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855");
}

TEST_CASE("hex_upper", "[crypto]") {
    CHECK(sg::hex_upper("") == "");
    CHECK(sg::hex_upper("\x00\x0f\xa5\xff"s) == "000FA5FF");
}

TEST_CASE("constant_time_equal", "[crypto]") {
    CHECK(sg::constant_time_equal("", ""));
    CHECK(sg::constant_time_equal("abcdef", "abcdef"));
    CHECK_FALSE(sg::constant_time_equal("abcdef", "abcdeg"));
    CHECK_FALSE(sg::constant_time_equal("abcdef", "bbcdef"));
    CHECK_FALSE(sg::constant_time_equal("abcdef", "abcde"));
    CHECK_FALSE(sg::constant_time_equal("", "a"));
    CHECK(sg::constant_time_equal("a\0b"s, "a\0b"s));
    CHECK_FALSE(sg::constant_time_equal("a\0b"s, "a\0c"s));
}

TEST_CASE("random bytes, keys and tokens", "[crypto]") {
    CHECK(sg::random_bytes(0).empty());
    CHECK(sg::random_bytes(17).size() == 17);
    std::set<std::string> seen;
    for (int i = 0; i < 50; ++i) seen.insert(sg::random_bytes(16));
    CHECK(seen.size() == 50);

    auto key = sg::random_key_base64();
    auto decoded = sg::base64_decode(key);
    REQUIRE(decoded);
    CHECK(decoded->size() == 32);
    CHECK(sg::base64_decode(sg::random_key_base64(16))->size() == 16);
    CHECK(sg::random_key_base64() != key);

    auto token = sg::random_token();
    CHECK(token.size() == 43); // 32 bytes, unpadded
    CHECK(token.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == std::string::npos);
    CHECK(sg::random_token() != token);
}

TEST_CASE("url_encode keeps only unreserved characters", "[crypto]") {
    CHECK(sg::url_encode("AZaz09-_.~") == "AZaz09-_.~");
    CHECK(sg::url_encode("a b/c:d+e=f&g%") == "a%20b%2Fc%3Ad%2Be%3Df%26g%25");
    CHECK(sg::url_encode("a b/c:d+e=f&g%", true) == "a%20b%2fc%3ad%2be%3df%26g%25");
    CHECK(sg::url_encode("\xc3\xa9\x00"s) == "%C3%A9%00");
    CHECK(sg::url_encode("") == "");
}

TEST_CASE("url_decode", "[crypto]") {
    CHECK(sg::url_decode("a%2Fb%2fc") == std::optional<std::string>("a/b/c"));
    CHECK(sg::url_decode("a+b") == std::optional<std::string>("a+b"));
    CHECK(sg::url_decode("a+b", true) == std::optional<std::string>("a b"));
    CHECK(sg::url_decode("%00") == std::optional<std::string>("\0"s));
    CHECK(sg::url_decode("%C3%A9") == std::optional<std::string>("\xc3\xa9"));
    CHECK(sg::url_decode("") == std::optional<std::string>(""));
    CHECK_FALSE(sg::url_decode("%"));
    CHECK_FALSE(sg::url_decode("abc%2"));
    CHECK_FALSE(sg::url_decode("%zz"));
    CHECK_FALSE(sg::url_decode("%g0"));
    CHECK_FALSE(sg::url_decode("%0g"));
    CHECK_FALSE(sg::url_decode("%%41"));
    const std::string text = "MyHub.example:8443/devices/dev+1#x ?&=";
    CHECK(sg::url_decode(sg::url_encode(text)) == std::optional<std::string>(text));
    CHECK(sg::url_decode(sg::url_encode(text, true)) == std::optional<std::string>(text));
}

TEST_CASE("to_lower is ASCII only", "[crypto]") {
    CHECK(sg::to_lower("MyHub.Example:8443/Devices/DEV1") == "myhub.example:8443/devices/dev1");
    CHECK(sg::to_lower("\xc3\x89") == "\xc3\x89");
}
