#include <catch2/catch.hpp>

#include "common/crypto.hpp"
#include "common/iothub_mqtt.hpp"
#include "common/mqtt_codec.hpp"

#include <string>

using namespace sg::mqtt;
using sg::query_value;
using namespace std::string_literals;

namespace {

std::string hex(std::string_view s)
{
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

// Splits one whole packet: its header, and its body.
std::pair<fixed_header, std::string> whole(const std::string& bytes)
{
    fixed_header h;
    std::string error;
    INFO(hex(bytes));
    REQUIRE(peek_packet(bytes, 1 << 20, h, error) == frame_status::complete);
    REQUIRE(h.packet_size() == bytes.size());
    return {h, bytes.substr(h.header_size)};
}

connect_packet sample_connect()
{
    connect_packet c;
    c.protocol_name = "MQTT";
    c.protocol_level = 4;
    c.clean_session = true;
    c.keep_alive = 240;
    c.client_id = "dev1";
    c.username = "relay.example.com/dev1/?api-version=2021-04-12&DeviceClientType=iothubclient%2F1.11.0";
    c.password = "SharedAccessSignature sr=relay.example.com%2Fdevices%2Fdev1&sig=abc&se=1";
    return c;
}

} // namespace

TEST_CASE("mqtt: remaining length, 1 to 4 bytes, as the standard's table gives them", "[mqtt]")
{
    CHECK(hex(encode_remaining_length(0)) == "00");
    CHECK(hex(encode_remaining_length(127)) == "7f");
    CHECK(hex(encode_remaining_length(128)) == "8001");
    CHECK(hex(encode_remaining_length(16383)) == "ff7f");
    CHECK(hex(encode_remaining_length(16384)) == "808001");
    CHECK(hex(encode_remaining_length(2097151)) == "ffff7f");
    CHECK(hex(encode_remaining_length(2097152)) == "80808001");
    CHECK(hex(encode_remaining_length(max_remaining_length)) == "ffffff7f");

    fixed_header h;
    std::string error;
    CHECK(peek_packet("\x30\xff\xff\xff\x7f"s, max_remaining_length + 5, h, error) == frame_status::incomplete);
    CHECK(h.remaining == max_remaining_length);
    CHECK(h.header_size == 5);
}

TEST_CASE("mqtt: a fixed header that is malformed, incomplete or too large", "[mqtt]")
{
    fixed_header h;
    std::string error;
    CHECK(peek_packet("", 1024, h, error) == frame_status::incomplete);
    CHECK(peek_packet("\x10"s, 1024, h, error) == frame_status::incomplete);
    CHECK(peek_packet("\x10\x80"s, 1024, h, error) == frame_status::incomplete);
    CHECK(peek_packet("\x10\x05\x00"s, 1024, h, error) == frame_status::incomplete);

    error.clear();
    CHECK(peek_packet("\x10\xff\xff\xff\xff\x01"s, 1 << 30, h, error) == frame_status::malformed);
    CHECK(error == "remaining length longer than 4 bytes");
    CHECK(peek_packet("\x00\x00"s, 1024, h, error) == frame_status::malformed); // type 0
    CHECK(peek_packet("\xf0\x00"s, 1024, h, error) == frame_status::malformed); // type 15
    CHECK(peek_packet("\x80\x00"s, 1024, h, error) == frame_status::malformed); // SUBSCRIBE needs flags 0010
    CHECK(peek_packet("\x11\x00"s, 1024, h, error) == frame_status::malformed); // CONNECT has no flags
    CHECK(peek_packet("\x36\x00"s, 1024, h, error) == frame_status::malformed); // PUBLISH QoS 3
    CHECK(peek_packet("\xc0\x00"s, 1024, h, error) == frame_status::complete);  // PINGREQ
    CHECK(h.type == packet_type::pingreq);

    error.clear();
    CHECK(peek_packet("\x30\x80\x08"s, 1024, h, error) == frame_status::too_large); // 1027 bytes
    CHECK(h.remaining == 1024);
    CHECK_FALSE(error.empty());
    CHECK(peek_packet("\x30\xfd\x07"s, 1024, h, error) == frame_status::incomplete); // exactly 1024
}

TEST_CASE("mqtt: CONNECT round trip, and what makes one malformed", "[mqtt]")
{
    auto c = sample_connect();
    auto [h, body] = whole(encode_connect(c));
    REQUIRE(h.type == packet_type::connect);
    std::string error;
    auto back = parse_connect(h, body, error);
    INFO(error);
    REQUIRE(back);
    CHECK(back->protocol_name == "MQTT");
    CHECK(back->protocol_level == 4);
    CHECK(back->clean_session);
    CHECK(back->keep_alive == 240);
    CHECK(back->client_id == "dev1");
    CHECK(back->username == c.username);
    CHECK(back->password == c.password);
    CHECK_FALSE(back->will);

    // With a will, no password (an X.509 device).
    c.will = true;
    c.will_qos = 1;
    c.will_topic = "devices/dev1/messages/events/";
    c.will_message = "gone";
    c.password.reset();
    std::tie(h, body) = whole(encode_connect(c));
    back = parse_connect(h, body, error);
    REQUIRE(back);
    CHECK(back->will_topic == c.will_topic);
    CHECK(back->will_message == "gone");
    CHECK(back->will_qos == 1);
    CHECK_FALSE(back->password);

    // MQTT 3.1 ("MQIsdp", level 3) parses, so the server can answer CONNACK 1.
    auto old = sample_connect();
    old.protocol_name = "MQIsdp";
    old.protocol_level = 3;
    std::tie(h, body) = whole(encode_connect(old));
    back = parse_connect(h, body, error);
    REQUIRE(back);
    CHECK(back->protocol_level == 3);

    auto refuse = [](std::string body, const std::string& why) {
        fixed_header fh{packet_type::connect, 0, body.size(), 2};
        std::string e;
        INFO(why << ": " << hex(body));
        CHECK_FALSE(parse_connect(fh, body, e));
        CHECK_FALSE(e.empty());
    };
    std::string good = whole(encode_connect(sample_connect())).second;
    refuse(good.substr(0, good.size() - 1), "password cut short");
    refuse(good + "x", "a byte after the payload");
    std::string reserved = good;
    reserved[7] = static_cast<char>(reserved[7] | 1);
    refuse(reserved, "reserved flag");
    std::string password_only = good;
    password_only[7] = static_cast<char>((password_only[7] & ~0x80) | 0x40);
    refuse(password_only, "password without user name");
    std::string will_qos_alone = good;
    will_qos_alone[7] = static_cast<char>(will_qos_alone[7] | 0x08);
    refuse(will_qos_alone, "will QoS without will");
    auto nul = sample_connect();
    nul.client_id = "de\0v"s;
    refuse(whole(encode_connect(nul)).second, "U+0000 in the client id");
    auto bad_utf8 = sample_connect();
    bad_utf8.username = "\xc0\xafhost/dev1/"s;
    refuse(whole(encode_connect(bad_utf8)).second, "overlong UTF-8 in the user name");
    refuse("", "empty");
}

TEST_CASE("mqtt: PUBLISH at QoS 0 and 1, and malformed ones", "[mqtt]")
{
    publish_packet p;
    p.topic = "$iothub/streams/res/200/?$rid=1a2b";
    auto [h, body] = whole(encode_publish(p));
    CHECK(hex(encode_publish(p).substr(0, 1)) == "30");
    std::string error;
    auto back = parse_publish(h, body, error);
    REQUIRE(back);
    CHECK(back->topic == p.topic);
    CHECK(back->qos == 0);
    CHECK(back->payload.empty());

    p.qos = 1;
    p.packet_id = 7;
    p.payload = "no thanks";
    std::tie(h, body) = whole(encode_publish(p));
    back = parse_publish(h, body, error);
    REQUIRE(back);
    CHECK(back->packet_id == 7);
    CHECK(back->payload == "no thanks");

    auto refuse = [](std::uint8_t flags, std::string body) {
        fixed_header fh{packet_type::publish, flags, body.size(), 2};
        std::string e;
        INFO(hex(body));
        CHECK_FALSE(parse_publish(fh, body, e));
    };
    refuse(0x2, "\x00\x01t\x00\x00"s);                  // QoS 1 with packet id 0
    refuse(0x0, "\x00\x03a/#"s);                        // wildcard in a topic name
    refuse(0x0, "\x00\x00"s);                           // empty topic
    refuse(0x8, "\x00\x01t"s);                          // DUP at QoS 0
    refuse(0x0, "\x00\x09short"s);                      // topic runs past the end
    refuse(0x2, "\x00\x01t\x01"s);                      // packet id cut short

    CHECK(hex(encode_puback(0x1234)) == "40021234");
    fixed_header ph{packet_type::puback, 0, 2, 2};
    CHECK(parse_packet_id_only(ph, "\x12\x34"s, error) == 0x1234);
}

TEST_CASE("mqtt: SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PING, DISCONNECT, CONNACK", "[mqtt]")
{
    subscribe_packet s{10, {{"$iothub/streams/POST/#", 0}, {"$iothub/twin/res/#", 1}}};
    auto [h, body] = whole(encode_subscribe(s));
    CHECK(h.flags == 0x2);
    std::string error;
    auto back = parse_subscribe(h, body, error);
    REQUIRE(back);
    CHECK(back->packet_id == 10);
    REQUIRE(back->filters.size() == 2);
    CHECK(back->filters[1].topic == "$iothub/twin/res/#");
    CHECK(back->filters[1].qos == 1);

    fixed_header sh{packet_type::subscribe, 2, 0, 2};
    auto refuse_sub = [&](std::string b) {
        sh.remaining = b.size();
        INFO(hex(b));
        CHECK_FALSE(parse_subscribe(sh, b, error));
    };
    refuse_sub("\x00\x0a"s);              // no filter
    refuse_sub("\x00\x00\x00\x01t\x00"s); // packet id 0
    refuse_sub("\x00\x0a\x00\x01t\x03"s); // QoS 3
    refuse_sub("\x00\x0a\x00\x01t\x04"s); // reserved bits
    refuse_sub("\x00\x0a\x00\x01t"s);     // QoS missing

    CHECK(hex(encode_suback(10, {0, 0x80})) == "9004000a0080");
    auto sub_ack = whole(encode_suback(10, {0, 0x80}));
    auto codes = parse_suback(sub_ack.first, sub_ack.second, error);
    REQUIRE(codes);
    CHECK(codes->second == std::vector<std::uint8_t>{0, 0x80});

    unsubscribe_packet u{11, {"$iothub/streams/POST/#"}};
    std::tie(h, body) = whole(encode_unsubscribe(u));
    auto ub = parse_unsubscribe(h, body, error);
    REQUIRE(ub);
    CHECK(ub->topics == u.topics);
    CHECK(hex(encode_unsuback(11)) == "b002000b");

    CHECK(hex(encode_pingreq()) == "c000");
    CHECK(hex(encode_pingresp()) == "d000");
    CHECK(hex(encode_disconnect()) == "e000");
    CHECK(hex(encode_connack(false, connack::not_authorized)) == "20020005");
    auto ack = whole(encode_connack(true, 0));
    auto parsed = parse_connack(ack.first, ack.second, error);
    REQUIRE(parsed);
    CHECK(parsed->first);
    CHECK(parsed->second == 0);
}

TEST_CASE("mqtt: strings must be UTF-8 without U+0000", "[mqtt]")
{
    CHECK(valid_mqtt_string(""));
    CHECK(valid_mqtt_string("dev-1"));
    CHECK(valid_mqtt_string("gr\xc3\xbc\xc3\x9f"));
    CHECK(valid_mqtt_string("\xf0\x9f\x98\x80"));
    CHECK_FALSE(valid_mqtt_string("a\0b"s));
    CHECK_FALSE(valid_mqtt_string("\xc3"));
    CHECK_FALSE(valid_mqtt_string("\xed\xa0\x80")); // a surrogate
    CHECK_FALSE(valid_mqtt_string("\xe0\x80\xaf")); // overlong
    CHECK_FALSE(valid_mqtt_string("\xff"));
}

TEST_CASE("iothub mqtt: the CONNECT user name", "[mqtt]")
{
    std::string error;
    auto u = parse_user_name("myhub.azure-devices.net/dev1/?api-version=2021-04-12&DeviceClientType=c%2F1.0 (x/y)", error);
    REQUIRE(u);
    CHECK(u->host == "myhub.azure-devices.net");
    CHECK(u->device_id == "dev1");
    CHECK(u->module_id.empty());
    CHECK(query_value(u->query, "api-version") == "2021-04-12");
    CHECK(query_value(u->query, "DeviceClientType") == "c/1.0 (x/y)");

    u = parse_user_name("127.0.0.1:8883/dev?1/", error);
    REQUIRE(u);
    CHECK(u->device_id == "dev?1");
    u = parse_user_name("h/dev1", error);
    REQUIRE(u);
    CHECK(u->device_id == "dev1");
    u = parse_user_name("h/dev1/mod1/?api-version=1", error);
    REQUIRE(u);
    CHECK(u->module_id == "mod1");

    CHECK_FALSE(parse_user_name("dev1", error));
    CHECK_FALSE(parse_user_name("/dev1/", error));
    CHECK_FALSE(parse_user_name("h//?api-version=1", error));
    CHECK_FALSE(parse_user_name("h/d/m/x/?a=1", error));
    CHECK_FALSE(parse_user_name(std::string(2000, 'h') + "/d/", error));
}

TEST_CASE("iothub mqtt: stream request and response topics", "[mqtt]")
{
    auto topic = stream_request_topic("ssh+1", "3f2a", "wss://relay.example.com:443/bridges/hub/dev%231/abc", "tok-_en");
    CHECK(topic ==
          "$iothub/streams/POST/ssh%2B1/?$rid=3f2a&$url=wss%3A%2F%2Frelay.example.com%3A443%2Fbridges%2Fhub%2Fdev%25231%2Fabc"
          "&$auth=tok-_en");
    CHECK(topic.find_first_of("+#") == std::string::npos);
    auto back = parse_stream_request_topic(topic);
    REQUIRE(back);
    CHECK(back->stream_name == "ssh+1");
    CHECK(back->rid == "3f2a");
    CHECK(back->url == "wss://relay.example.com:443/bridges/hub/dev%231/abc");
    CHECK(back->token == "tok-_en");

    std::string error;
    auto r = parse_stream_response_topic("$iothub/streams/res/200/?$rid=3f2a", error);
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->rid == "3f2a");
    r = parse_stream_response_topic("$iothub/streams/res/400/?$rid=3f2a&$extra=1", error);
    REQUIRE(r);
    CHECK(r->status == 400);
    CHECK(stream_response_topic(400, "3f2a") == "$iothub/streams/res/400/?$rid=3f2a");
    CHECK_FALSE(parse_stream_response_topic("$iothub/streams/res/200/", error));
    CHECK_FALSE(parse_stream_response_topic("$iothub/streams/res/abc/?$rid=1", error));
    CHECK_FALSE(parse_stream_response_topic("$iothub/streams/res/2000/?$rid=1", error));
    CHECK_FALSE(parse_stream_response_topic("$iothub/streams/res/200/?$rid=", error));
    CHECK_FALSE(parse_stream_response_topic("$iothub/twin/res/200/?$rid=1", error));
}

TEST_CASE("iothub mqtt: the streaming URL always names its port", "[mqtt]")
{
    CHECK(with_explicit_port("wss://relay.example.com/bridges/h/d/s") == "wss://relay.example.com:443/bridges/h/d/s");
    CHECK(with_explicit_port("wss://127.0.0.1:8443/bridges/h/d/s") == "wss://127.0.0.1:8443/bridges/h/d/s");
    CHECK(with_explicit_port("wss://[::1]/bridges/h/d/s") == "wss://[::1]:443/bridges/h/d/s");
    CHECK(with_explicit_port("wss://[::1]:9/b") == "wss://[::1]:9/b");
    CHECK(with_explicit_port("wss://host") == "wss://host:443");
}
