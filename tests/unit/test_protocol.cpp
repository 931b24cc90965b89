#include <catch2/catch.hpp>

#include "common/error.hpp"
#include "common/protocol.hpp"

#include <string>

using namespace sg::protocol;
using sg::failure;
namespace codes = sg::codes;
using namespace std::string_literals;

namespace {

bool contains(const std::string& s, const std::string& fragment) { return s.find(fragment) != std::string::npos; }

// True when s is well-formed UTF-8 (no truncated or overlong sequences, no surrogates).
bool valid_utf8(const std::string& s)
{
    std::size_t i = 0;
    while (i < s.size()) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        std::size_t n = 0;
        unsigned cp = 0;
        if (c < 0x80) { ++i; continue; }
        if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; }
        else return false;
        if (i + n >= s.size()) return false; // sequence runs past the end
        for (std::size_t k = 1; k <= n; ++k) {
            unsigned char cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)) return false;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

stream_request_message sample_request()
{
    stream_request_message m;
    m.request_id = "req-42";
    m.stream_name = "ssh";
    m.stream_id = "AbC123_-x";
    m.url = "wss://relay.example.com:8443/bridges/streamgate/dev1/AbC123_-x";
    m.authorization_token = "SharedAccessSignature sr=relay&sig=abc%2B%3D&se=1800000000";
    return m;
}

std::string parse_request_error(const std::string& text)
{
    std::string error;
    auto m = parse_stream_request(text, error);
    INFO("input: " << text.substr(0, 200));
    CHECK_FALSE(m.has_value());
    CHECK_FALSE(error.empty());
    return error;
}

std::string parse_response_error(const std::string& text)
{
    std::string error;
    auto m = parse_stream_response(text, error);
    INFO("input: " << text.substr(0, 200));
    CHECK_FALSE(m.has_value());
    CHECK_FALSE(error.empty());
    return error;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// Stream request / response
// ---------------------------------------------------------------------------------------------

TEST_CASE("protocol: stream request round trip", "[protocol]")
{
    auto m = sample_request();
    auto text = serialize(m);
    CHECK(contains(text, R"("type":"streamRequest")"));
    CHECK(contains(text, R"("requestId":"req-42")"));
    CHECK(contains(text, R"("streamName":"ssh")"));
    CHECK(contains(text, R"("authorizationToken":)"));

    std::string error;
    auto back = parse_stream_request(text, error);
    INFO("error: " << error);
    REQUIRE(back);
    CHECK(error.empty());
    CHECK(back->request_id == m.request_id);
    CHECK(back->stream_name == m.stream_name);
    CHECK(back->stream_id == m.stream_id);
    CHECK(back->url == m.url);
    CHECK(back->authorization_token == m.authorization_token);
}

TEST_CASE("protocol: stream request with characters needing JSON escapes round-trips", "[protocol]")
{
    stream_request_message m;
    m.request_id = "quote\" backslash\\ newline\n tab\t ctl\x01 nul"s + '\0' + " end";
    m.stream_name = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"; // café € 😀
    m.stream_id = "";
    m.url = "</script>";
    m.authorization_token = std::string(5000, 'k');
    std::string error;
    auto back = parse_stream_request(serialize(m), error);
    INFO("error: " << error);
    REQUIRE(back);
    CHECK(back->request_id == m.request_id);
    CHECK(back->stream_name == m.stream_name);
    CHECK(back->stream_id.empty());
    CHECK(back->url == m.url);
    CHECK(back->authorization_token == m.authorization_token);
}

TEST_CASE("protocol: stream response round trip", "[protocol]")
{
    SECTION("accepted")
    {
        stream_response_message m;
        m.request_id = "req-1";
        m.accepted = true;
        m.reason = "ignored when accepted";
        auto text = serialize(m);
        CHECK(contains(text, R"("type":"streamResponse")"));
        CHECK(contains(text, R"("accepted":true)"));
        CHECK_FALSE(contains(text, "reason")); // only a refusal carries a reason
        std::string error;
        auto back = parse_stream_response(text, error);
        INFO("error: " << error);
        REQUIRE(back);
        CHECK(back->request_id == "req-1");
        CHECK(back->accepted);
        CHECK(back->reason.empty());
    }
    SECTION("refused with a reason")
    {
        stream_response_message m;
        m.request_id = "req-2";
        m.accepted = false;
        m.reason = "no service \"ssh\" here \xE2\x9C\x97";
        auto text = serialize(m);
        CHECK(contains(text, R"("accepted":false)"));
        std::string error;
        auto back = parse_stream_response(text, error);
        INFO("error: " << error);
        REQUIRE(back);
        CHECK(back->request_id == "req-2");
        CHECK_FALSE(back->accepted);
        CHECK(back->reason == m.reason);
    }
    SECTION("reason is optional and cut to 1024 bytes")
    {
        std::string error;
        auto no_reason = parse_stream_response(R"({"type":"streamResponse","requestId":"r","accepted":false})", error);
        INFO("error: " << error);
        REQUIRE(no_reason);
        CHECK(no_reason->reason.empty());

        stream_response_message m;
        m.request_id = "r";
        m.reason = std::string(5000, 'x');
        auto long_reason = parse_stream_response(serialize(m), error);
        REQUIRE(long_reason);
        CHECK(long_reason->reason == std::string(1024, 'x'));
    }
    SECTION("unknown extra fields are ignored; key order does not matter")
    {
        std::string error;
        auto m = parse_stream_response(R"({"accepted":true,"extra":[1,2,{"a":null}],"requestId":"r","type":"streamResponse"})",
                                       error);
        INFO("error: " << error);
        REQUIRE(m);
        CHECK(m->accepted);
        CHECK(m->request_id == "r");
    }
}

TEST_CASE("protocol: garbage and truncated JSON are parse errors", "[protocol]")
{
    for (std::string text : {""s, " "s, "garbage"s, "{"s, "}"s, "{\"type\":"s, "{\"type\":\"streamRequest\""s,
                             "\x00\x01\x02"s, "{'type':'streamRequest'}"s, "{\"type\":\"streamResponse\",}"s,
                             "{} {}"s, "{\"a\":1}x"s, "\xFF\xFE{}"s}) {
        INFO("input bytes: " << text.size());
        CHECK(contains(parse_request_error(text), "malformed JSON"));
        CHECK(contains(parse_response_error(text), "malformed JSON"));
    }
    // Every truncation of a valid message is refused, never a crash or a half-filled message.
    auto full = serialize(sample_request());
    for (std::size_t n = 0; n < full.size(); ++n) {
        std::string error;
        auto m = parse_stream_request(full.substr(0, n), error);
        INFO("prefix length " << n);
        CHECK_FALSE(m);
        CHECK(contains(error, "malformed JSON"));
    }
    // Invalid UTF-8 inside a string value.
    CHECK(contains(parse_response_error("{\"type\":\"streamResponse\",\"requestId\":\"\xC3\x28\",\"accepted\":true}"),
                   "malformed JSON"));
}

TEST_CASE("protocol: JSON that is not an object is refused", "[protocol]")
{
    for (std::string text : {"[]", "[{\"type\":\"streamRequest\"}]", "\"streamRequest\"", "42", "null", "true"}) {
        INFO("input: " << text);
        CHECK(parse_request_error(text) == "expected a JSON object");
        CHECK(parse_response_error(text) == "expected a JSON object");
    }
}

TEST_CASE("protocol: wrong or missing message type", "[protocol]")
{
    CHECK(parse_request_error(R"({"requestId":"r"})") == R"(missing "type")");
    CHECK(parse_response_error(R"({"requestId":"r","accepted":true})") == R"(missing "type")");
    CHECK(parse_request_error(R"({"type":1})") == R"("type" must be a string)");

    // A response where a request is expected and vice versa.
    auto resp = serialize(stream_response_message{"r", true, ""});
    CHECK(parse_request_error(resp) == R"(unexpected message type "streamResponse")");
    CHECK(parse_response_error(serialize(sample_request())) == R"(unexpected message type "streamRequest")");
    // Case matters.
    CHECK(contains(parse_response_error(R"({"type":"StreamResponse","requestId":"r","accepted":true})"),
                   "unexpected message type"));
    // An echoed type is cut to 32 bytes.
    auto long_type = parse_response_error(R"({"type":")" + std::string(500, 't') + R"(","requestId":"r","accepted":true})");
    CHECK(long_type == "unexpected message type \"" + std::string(32, 't') + "\"");
}

TEST_CASE("protocol: missing fields are named", "[protocol]")
{
    const char* fields[] = {"requestId", "streamName", "streamId", "url", "authorizationToken"};
    for (const char* missing : fields) {
        std::string text = R"({"type":"streamRequest")";
        for (const char* f : fields)
            if (std::string(f) != missing)
                text += std::string(",\"") + f + "\":\"v\"";
        text += "}";
        INFO("without " << missing);
        CHECK(parse_request_error(text) == std::string("missing \"") + missing + "\"");
    }
    CHECK(parse_response_error(R"({"type":"streamResponse","accepted":true})") == R"(missing "requestId")");
    CHECK(parse_response_error(R"({"type":"streamResponse","requestId":"r"})") ==
          R"("accepted" must be true or false)");
}

TEST_CASE("protocol: wrong field types are refused", "[protocol]")
{
    CHECK(parse_request_error(
              R"({"type":"streamRequest","requestId":5,"streamName":"s","streamId":"i","url":"u","authorizationToken":"t"})") ==
          R"("requestId" must be a string)");
    CHECK(parse_request_error(
              R"({"type":"streamRequest","requestId":"r","streamName":null,"streamId":"i","url":"u","authorizationToken":"t"})") ==
          R"("streamName" must be a string)");
    CHECK(parse_request_error(
              R"({"type":"streamRequest","requestId":"r","streamName":"s","streamId":"i","url":["u"],"authorizationToken":"t"})") ==
          R"("url" must be a string)");
    CHECK(parse_request_error(
              R"({"type":"streamRequest","requestId":"r","streamName":"s","streamId":"i","url":"u","authorizationToken":{}})") ==
          R"("authorizationToken" must be a string)");

    for (std::string accepted : {"\"true\"", "1", "0", "null", "[]", "{}"}) {
        INFO("accepted: " << accepted);
        CHECK(parse_response_error(R"({"type":"streamResponse","requestId":"r","accepted":)" + accepted + "}") ==
              R"("accepted" must be true or false)");
    }
    CHECK(parse_response_error(R"({"type":"streamResponse","requestId":"r","accepted":false,"reason":7})") ==
          R"("reason" must be a string)");
    CHECK(parse_response_error(R"({"type":"streamResponse","requestId":true,"accepted":false})") ==
          R"("requestId" must be a string)");
}

TEST_CASE("protocol: deeply nested JSON is refused without exhausting the stack", "[protocol]")
{
    // Nested inside an otherwise valid message, and a huge bare nesting.
    std::string nested = std::string(64, '[') + std::string(64, ']');
    auto e1 = parse_response_error(R"({"type":"streamResponse","requestId":"r","accepted":true,"x":)" + nested + "}");
    CHECK(contains(e1, "malformed JSON"));

    std::string deep(1'000'000, '[');
    CHECK(contains(parse_request_error(deep), "malformed JSON"));
    std::string deep_objects;
    for (int i = 0; i < 100000; ++i)
        deep_objects += "{\"a\":";
    CHECK(contains(parse_response_error(deep_objects), "malformed JSON"));

    // Modest nesting (within the limit) in an ignored field is fine.
    std::string error;
    auto ok = parse_stream_response(R"({"type":"streamResponse","requestId":"r","accepted":true,"x":[[[1]]]})", error);
    INFO("error: " << error);
    CHECK(ok);
}

TEST_CASE("protocol: a 1 MB string does not crash the parser", "[protocol]")
{
    const std::string big(1 << 20, 'a');
    SECTION("as a field value it is kept whole")
    {
        stream_request_message m = sample_request();
        m.request_id = big;
        std::string error;
        auto back = parse_stream_request(serialize(m), error);
        INFO("error: " << error.substr(0, 200));
        REQUIRE(back);
        CHECK(back->request_id.size() == big.size());
        CHECK(back->request_id == big);
    }
    SECTION("as the type it is refused and not echoed whole")
    {
        auto e = parse_response_error(R"({"type":")" + big + R"(","requestId":"r","accepted":true})");
        CHECK(contains(e, "unexpected message type"));
        CHECK(e.size() < 100);
    }
    SECTION("as a reason it is cut to 1024 bytes")
    {
        std::string error;
        auto m = parse_stream_response(R"({"type":"streamResponse","requestId":"r","accepted":false,"reason":")" + big +
                                           R"("})",
                                       error);
        REQUIRE(m);
        CHECK(m->reason.size() == 1024);
    }
    SECTION("as an unterminated string it is a parse error")
    {
        CHECK(contains(parse_request_error("{\"type\":\"" + big), "malformed JSON"));
    }
    SECTION("as raw garbage it is a parse error")
    {
        CHECK(contains(parse_request_error(big), "malformed JSON"));
    }
}

// ---------------------------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------------------------

TEST_CASE("protocol: error_body and parse_error_body round trip", "[protocol]")
{
    for (int code : {codes::bad_request, codes::unauthorized, codes::device_not_found, codes::device_not_online,
                     codes::throttled, codes::gateway_timeout}) {
        const std::string message = "something \"quoted\" with \\ and \xC3\xA9 for code " + std::to_string(code);
        auto body = error_body(code, message);
        CHECK(contains(body, "\"errorCode\":" + std::to_string(code)));
        auto f = parse_error_body(body, sg::http_status_of(code));
        INFO("body: " << body);
        CHECK(f.code == code);
        CHECK(f.message == message);
    }
    // The code in the body wins over the HTTP status.
    auto f = parse_error_body(error_body(codes::device_not_online, "offline"), 500);
    CHECK(f.code == codes::device_not_online);
    CHECK(f.message == "offline");
    // An empty message is kept empty.
    auto e = parse_error_body(error_body(codes::unauthorized, ""), 401);
    CHECK(e.code == codes::unauthorized);
    CHECK(e.message.empty());
    // Exact wire form (documented in docs/PROTOCOL.md).
    CHECK(error_body(404103, "x") == R"({"errorCode":404103,"message":"x"})");
}

TEST_CASE("protocol: parse_error_body falls back for bodies that are not error JSON", "[protocol]")
{
    auto html = parse_error_body("<html><body>502 Bad Gateway</body></html>", 502);
    CHECK(html.code == 502000);
    CHECK(html.message == "HTTP 502: <html><body>502 Bad Gateway</body></html>");

    auto empty = parse_error_body("", 503);
    CHECK(empty.code == 503000);
    CHECK(empty.message == "HTTP 503");

    auto plain = parse_error_body("Not Found", 404);
    CHECK(plain.code == 404000);
    CHECK(plain.message == "HTTP 404: Not Found");

    // JSON without a usable integer errorCode falls back too, quoting the raw body.
    auto no_code = parse_error_body(R"({"message":"hi"})", 400);
    CHECK(no_code.code == 400000);
    CHECK(no_code.message == R"(HTTP 400: {"message":"hi"})");
    auto string_code = parse_error_body(R"({"errorCode":"404103","message":"hi"})", 404);
    CHECK(string_code.code == 404000);
    auto float_code = parse_error_body(R"({"errorCode":404103.5,"message":"hi"})", 404);
    CHECK(float_code.code == 404000);
    auto array = parse_error_body(R"([404103,"hi"])", 404);
    CHECK(array.code == 404000);

    // Long bodies are quoted up to 200 bytes.
    auto long_body = parse_error_body(std::string(10000, 'z'), 500);
    CHECK(long_body.code == 500000);
    CHECK(long_body.message == "HTTP 500: " + std::string(200, 'z'));

    // The fallback is always a failure (truthy), so callers never mistake it for success.
    CHECK(static_cast<bool>(parse_error_body("", 500)));
}

// A body with "errorCode": 0 (or a code that is not a six-digit one) must not come back as a falsy
// failure: callers would take a non-2xx response for success.
TEST_CASE("protocol: an error body never parses as success", "[protocol]")
{
    auto zero = parse_error_body(R"({"errorCode":0,"message":""})", 500);
    CHECK(static_cast<bool>(zero));
    CHECK(zero.code != 0);
    auto huge = parse_error_body(R"({"errorCode":4294967296,"message":""})", 500);
    CHECK(static_cast<bool>(huge));
    CHECK(huge.code != 0);
}

// ---------------------------------------------------------------------------------------------
// Close reasons
// ---------------------------------------------------------------------------------------------

TEST_CASE("protocol: close_reason_text and parse_close_reason round trip", "[protocol]")
{
    auto text = close_reason_text(codes::connection_replaced, "a newer connection for this device replaced this one");
    CHECK(text.rfind("400027 ", 0) == 0);
    CHECK(text == "400027 ConnectionForcefullyClosedOnNewConnection: a newer connection for this device replaced this one");
    CHECK(text.size() <= 123);
    auto f = parse_close_reason(text);
    CHECK(f.code == codes::connection_replaced);
    CHECK(f.message == "a newer connection for this device replaced this one");

    auto g = parse_close_reason(close_reason_text(codes::gateway_timeout, "the other side never joined"));
    CHECK(g.code == 504101);
    CHECK(g.message == "the other side never joined");

    // A message containing ": " keeps everything after the name's colon.
    auto h = parse_close_reason(close_reason_text(codes::bad_request, "invalid control message: missing \"type\""));
    CHECK(h.code == 400000);
    CHECK(h.message == "invalid control message: missing \"type\"");

    // An unknown code still round-trips (name "Error").
    auto u = parse_close_reason(close_reason_text(418001, "teapot"));
    CHECK(u.code == 418001);
    CHECK(u.message == "teapot");
}

TEST_CASE("protocol: close_reason_text is cut to 123 bytes", "[protocol]")
{
    for (std::size_t len : {0u, 1u, 60u, 73u, 74u, 75u, 200u, 5000u}) {
        auto text = close_reason_text(codes::connection_replaced, std::string(len, 'm'));
        INFO("message length " << len);
        CHECK(text.size() <= 123);
        CHECK(text.rfind("400027 ConnectionForcefullyClosedOnNewConnection: ", 0) == 0);
        auto f = parse_close_reason(text);
        CHECK(f.code == 400027);
        CHECK(f.message == std::string(std::min<std::size_t>(len, 123 - 50), 'm'));
    }
    CHECK(close_reason_text(codes::bad_request, std::string(1000, 'x')).size() == 123);
}

// RFC 6455 requires a close reason to be valid UTF-8, and Beast's reader fails with
// bad_close_payload when it is not, so the peer would lose the code and message.
TEST_CASE("protocol: a cut close reason is still valid UTF-8", "[protocol]")
{
    // "400000 BadRequest: " is 19 bytes; 3-byte characters put a character across byte 123.
    std::string euros;
    for (int i = 0; i < 60; ++i)
        euros += "\xE2\x82\xAC";
    auto text = close_reason_text(codes::bad_request, euros);
    CHECK(text.size() <= 123);
    CHECK(valid_utf8(text));
}

TEST_CASE("protocol: an echoed message type is cut on a UTF-8 boundary", "[protocol]")
{
    // 11 three-byte characters are 33 bytes; cut to at most 32 the error (sent back to the device in a
    // close reason) must not end in a broken sequence.
    std::string type;
    for (int i = 0; i < 11; ++i)
        type += "\xE2\x82\xAC";
    auto e = parse_response_error(R"({"type":")" + type + R"(","requestId":"r","accepted":true})");
    CHECK(contains(e, "unexpected message type"));
    CHECK(valid_utf8(e));
}

TEST_CASE("protocol: parse_close_reason on reasons not in the NNNNNN form", "[protocol]")
{
    for (std::string reason : {""s, "bye"s, "normal closure"s, "12345 short code"s, "40002x BadRequest: x"s,
                               "4000270 too many digits"s, "ABCDEF x"s}) {
        INFO("reason: " << reason);
        auto f = parse_close_reason(reason);
        CHECK(f.code == 0);
        CHECK(f.message == reason);
    }
    // Six digits and a space without a name: the rest is the message.
    auto bare = parse_close_reason("404103 device went away");
    CHECK(bare.code == 404103);
    CHECK(bare.message == "device went away");
}
