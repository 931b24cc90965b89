// libFuzzer target: the MQTT codec (common/mqtt_codec.hpp) and IoT Hub's topics and user names on
// top of it (common/iothub_mqtt.hpp), fed a byte stream the way relay/mqtt.cpp reads one: packet
// after packet from the front of a buffer, with the relay's 16 KiB packet cap.
// Invariants checked:
//  - peek_packet never claims a packet larger than the cap or than the input, and a complete
//    packet's header re-encodes to the same bytes;
//  - a body that parses re-encodes and parses back to the same packet (CONNECT, PUBLISH,
//    SUBSCRIBE, UNSUBSCRIBE);
//  - every failure comes with a reason; every parsed string is valid MQTT UTF-8;
//  - user names and stream response topics: a parse fails with a reason or yields a device id /
//    request id that is non-empty; a request topic built from parsed fields parses back.
#include "common/iothub_mqtt.hpp"
#include "common/mqtt_codec.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

namespace mqtt = sg::mqtt;
constexpr std::size_t cap = 16 * 1024;

void check_connect(const mqtt::fixed_header& h, std::string_view body)
{
    std::string error;
    auto c = mqtt::parse_connect(h, body, error);
    SG_FUZZ_CHECK(c.has_value() || !error.empty());
    if (!c || c->protocol_name != "MQTT" || c->protocol_level != 4)
        return;
    SG_FUZZ_CHECK(mqtt::valid_mqtt_string(c->client_id));
    auto again_bytes = mqtt::encode_connect(*c);
    mqtt::fixed_header h2;
    std::string e2;
    SG_FUZZ_CHECK(mqtt::peek_packet(again_bytes, 1 << 20, h2, e2) == mqtt::frame_status::complete);
    auto again = mqtt::parse_connect(h2, std::string_view(again_bytes).substr(h2.header_size), e2);
    SG_FUZZ_CHECK(again.has_value());
    SG_FUZZ_CHECK(again->client_id == c->client_id && again->username == c->username && again->password == c->password &&
                  again->keep_alive == c->keep_alive && again->will_topic == c->will_topic &&
                  again->will_message == c->will_message && again->clean_session == c->clean_session);
    if (c->username) {
        std::string ue;
        auto u = mqtt::parse_user_name(*c->username, ue);
        SG_FUZZ_CHECK(u.has_value() ? !u->device_id.empty() : !ue.empty());
    }
}

void check_publish(const mqtt::fixed_header& h, std::string_view body)
{
    std::string error;
    auto p = mqtt::parse_publish(h, body, error);
    SG_FUZZ_CHECK(p.has_value() || !error.empty());
    if (!p)
        return;
    SG_FUZZ_CHECK(mqtt::valid_mqtt_string(p->topic));
    auto bytes = mqtt::encode_publish(*p);
    mqtt::fixed_header h2;
    std::string e2;
    SG_FUZZ_CHECK(mqtt::peek_packet(bytes, 1 << 20, h2, e2) == mqtt::frame_status::complete);
    auto again = mqtt::parse_publish(h2, std::string_view(bytes).substr(h2.header_size), e2);
    SG_FUZZ_CHECK(again && again->topic == p->topic && again->payload == p->payload && again->qos == p->qos &&
                  again->packet_id == p->packet_id);

    std::string re;
    auto r = mqtt::parse_stream_response_topic(p->topic, re);
    SG_FUZZ_CHECK(r.has_value() ? !r->rid.empty() && r->status >= 0 && r->status <= 999 : !re.empty());
    if (auto req = mqtt::parse_stream_request_topic(p->topic)) {
        auto topic = mqtt::stream_request_topic(req->stream_name, req->rid, req->url, req->token);
        auto back = mqtt::parse_stream_request_topic(topic);
        SG_FUZZ_CHECK(back && back->stream_name == req->stream_name && back->rid == req->rid && back->url == req->url &&
                      back->token == req->token);
        SG_FUZZ_CHECK(topic.find_first_of("+#") == std::string::npos);
    }
}

void check_subscribe(const mqtt::fixed_header& h, std::string_view body)
{
    std::string error;
    auto s = mqtt::parse_subscribe(h, body, error);
    SG_FUZZ_CHECK(s.has_value() || !error.empty());
    if (!s)
        return;
    SG_FUZZ_CHECK(!s->filters.empty() && s->packet_id != 0);
    auto bytes = mqtt::encode_subscribe(*s);
    mqtt::fixed_header h2;
    std::string e2;
    SG_FUZZ_CHECK(mqtt::peek_packet(bytes, 1 << 20, h2, e2) == mqtt::frame_status::complete);
    auto again = mqtt::parse_subscribe(h2, std::string_view(bytes).substr(h2.header_size), e2);
    SG_FUZZ_CHECK(again && again->filters.size() == s->filters.size());
    for (std::size_t i = 0; i < s->filters.size(); ++i)
        SG_FUZZ_CHECK(again->filters[i].topic == s->filters[i].topic && again->filters[i].qos == s->filters[i].qos);
}

void check_unsubscribe(const mqtt::fixed_header& h, std::string_view body)
{
    std::string error;
    auto u = mqtt::parse_unsubscribe(h, body, error);
    SG_FUZZ_CHECK(u.has_value() || !error.empty());
    if (!u)
        return;
    auto bytes = mqtt::encode_unsubscribe(*u);
    mqtt::fixed_header h2;
    std::string e2;
    SG_FUZZ_CHECK(mqtt::peek_packet(bytes, 1 << 20, h2, e2) == mqtt::frame_status::complete);
    auto again = mqtt::parse_unsubscribe(h2, std::string_view(bytes).substr(h2.header_size), e2);
    SG_FUZZ_CHECK(again && again->topics == u->topics);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    std::string_view in = sg_fuzz::as_text(data, size);
    // The user-name parser and the URL helper see the raw text too.
    {
        std::string e;
        auto u = mqtt::parse_user_name(in, e);
        SG_FUZZ_CHECK(u.has_value() ? !u->device_id.empty() && u->device_id.find('/') == std::string::npos : !e.empty());
        auto url = mqtt::with_explicit_port(in);
        SG_FUZZ_CHECK(url.size() >= in.size());
    }
    while (!in.empty()) {
        mqtt::fixed_header h;
        std::string error;
        auto status = mqtt::peek_packet(in, cap, h, error);
        if (status == mqtt::frame_status::incomplete)
            break;
        if (status != mqtt::frame_status::complete) {
            SG_FUZZ_CHECK(!error.empty());
            break;
        }
        SG_FUZZ_CHECK(h.packet_size() <= cap && h.packet_size() <= in.size());
        SG_FUZZ_CHECK(h.header_size >= 2 && h.header_size <= 5);
        SG_FUZZ_CHECK(mqtt::encode_remaining_length(h.remaining).size() <= h.header_size - 1);
        auto body = in.substr(h.header_size, h.remaining);
        switch (h.type) {
        case mqtt::packet_type::connect: check_connect(h, body); break;
        case mqtt::packet_type::publish: check_publish(h, body); break;
        case mqtt::packet_type::subscribe: check_subscribe(h, body); break;
        case mqtt::packet_type::unsubscribe: check_unsubscribe(h, body); break;
        default: {
            std::string e;
            (void)mqtt::parse_packet_id_only(h, body, e);
            (void)mqtt::parse_connack(h, body, e);
            (void)mqtt::parse_suback(h, body, e);
        }
        }
        in.remove_prefix(h.packet_size());
    }
    return 0;
}
