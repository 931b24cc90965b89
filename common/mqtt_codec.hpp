#pragma once
// MQTT 3.1.1 packets, as much of them as a device-streams endpoint needs: the fixed header and its
// remaining length, CONNECT/CONNACK, PUBLISH (QoS 0 and 1, PUBACK), SUBSCRIBE/SUBACK,
// UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP and DISCONNECT. Plain C++ (no I/O): the relay's MQTT
// session (relay/mqtt.cpp) feeds it bytes; unit tested and fuzzed. Every parser rejects what the
// OASIS standard says a server must treat as a protocol violation (bad flags, strings that are not
// UTF-8 or hold U+0000, lengths running past the packet) with a reason, never by crashing.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sg::mqtt {

enum class packet_type : std::uint8_t {
    connect = 1, connack, publish, puback, pubrec, pubrel, pubcomp,
    subscribe, suback, unsubscribe, unsuback, pingreq, pingresp, disconnect,
};
const char* to_string(packet_type t);

// CONNACK return codes (3.1.1, table 3.1).
namespace connack {
constexpr std::uint8_t accepted = 0;
constexpr std::uint8_t bad_protocol_version = 1;
constexpr std::uint8_t identifier_rejected = 2;
constexpr std::uint8_t server_unavailable = 3;
constexpr std::uint8_t bad_user_name_or_password = 4;
constexpr std::uint8_t not_authorized = 5;
} // namespace connack
constexpr std::uint8_t suback_failure = 0x80;

// The largest remaining length four bytes can encode.
constexpr std::size_t max_remaining_length = 268'435'455;

struct fixed_header {
    packet_type type = packet_type::connect;
    std::uint8_t flags = 0;       // low nibble of the first byte
    std::size_t remaining = 0;    // bytes after the header
    std::size_t header_size = 0;  // 2..5
    std::size_t packet_size() const { return header_size + remaining; }
};

enum class frame_status {
    incomplete, // need more bytes
    complete,   // a whole packet is at the start of the input
    malformed,  // remaining length over 4 bytes, packet type 0 or 15, or flags the type forbids
    too_large,  // the packet would exceed max_packet bytes
};

// Looks for one packet at the start of `data` (which may hold less, or more). `header` is filled
// as soon as the fixed header is known (also for too_large); `error` says why when malformed.
frame_status peek_packet(std::string_view data, std::size_t max_packet, fixed_header& header, std::string& error);

struct connect_packet {
    std::string protocol_name;   // "MQTT" for 3.1.1
    std::uint8_t protocol_level = 0; // 4 for 3.1.1
    bool clean_session = false;
    std::uint16_t keep_alive = 0; // seconds, 0 = none
    std::string client_id;
    bool will = false;
    std::uint8_t will_qos = 0;
    bool will_retain = false;
    std::string will_topic, will_message;
    std::optional<std::string> username, password;
};

struct publish_packet {
    std::string topic;
    std::uint8_t qos = 0;
    bool retain = false, dup = false;
    std::uint16_t packet_id = 0; // QoS 1 and 2 only
    std::string payload;
};

struct subscribe_packet {
    struct filter {
        std::string topic;
        std::uint8_t qos = 0;
    };
    std::uint16_t packet_id = 0;
    std::vector<filter> filters; // at least one
};

struct unsubscribe_packet {
    std::uint16_t packet_id = 0;
    std::vector<std::string> topics; // at least one
};

// Each parses the body (the `header.remaining` bytes after the fixed header) of a packet of its
// type; nullopt with `error` set when it is malformed. A CONNECT whose protocol name or level is
// not 3.1.1's still parses (the server answers it with CONNACK 1).
std::optional<connect_packet> parse_connect(const fixed_header& h, std::string_view body, std::string& error);
std::optional<publish_packet> parse_publish(const fixed_header& h, std::string_view body, std::string& error);
std::optional<subscribe_packet> parse_subscribe(const fixed_header& h, std::string_view body, std::string& error);
std::optional<unsubscribe_packet> parse_unsubscribe(const fixed_header& h, std::string_view body, std::string& error);
// PUBACK (and the other packets made of a packet id only): the id.
std::optional<std::uint16_t> parse_packet_id_only(const fixed_header& h, std::string_view body, std::string& error);
// CONNACK (what a client reads): {session present, return code}.
std::optional<std::pair<bool, std::uint8_t>> parse_connack(const fixed_header& h, std::string_view body, std::string& error);
// SUBACK: the packet id and one return code per filter.
std::optional<std::pair<std::uint16_t, std::vector<std::uint8_t>>> parse_suback(const fixed_header& h, std::string_view body,
                                                                                std::string& error);

// Whole packets, fixed header included.
std::string encode_connack(bool session_present, std::uint8_t return_code);
std::string encode_publish(const publish_packet& p);
std::string encode_puback(std::uint16_t packet_id);
std::string encode_suback(std::uint16_t packet_id, const std::vector<std::uint8_t>& return_codes);
std::string encode_unsuback(std::uint16_t packet_id);
std::string encode_pingresp();
// The client's side (tests, the fuzz target's round trips, load generators).
std::string encode_connect(const connect_packet& c);
std::string encode_subscribe(const subscribe_packet& s);
std::string encode_unsubscribe(const unsubscribe_packet& u);
std::string encode_pingreq();
std::string encode_disconnect();

// The variable-length remaining-length field (1..4 bytes); value must be <= max_remaining_length.
std::string encode_remaining_length(std::size_t value);

// MQTT's string rule: well-formed UTF-8 (no surrogates, no overlongs) without U+0000.
bool valid_mqtt_string(std::string_view s);

} // namespace sg::mqtt
