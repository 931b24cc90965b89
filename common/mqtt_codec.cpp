#include "common/mqtt_codec.hpp"

namespace sg::mqtt {

namespace {

// Reads the fields of a packet body in order; the first failure sticks.
class reader {
public:
    explicit reader(std::string_view body) : rest_(body) {}
    bool ok() const { return error_.empty(); }
    bool at_end() const { return rest_.empty(); }
    const std::string& error() const { return error_; }
    void fail(std::string why)
    {
        if (error_.empty())
            error_ = std::move(why);
    }
    std::uint8_t u8(const char* what)
    {
        if (rest_.empty()) {
            fail(std::string(what) + " runs past the end of the packet");
            return 0;
        }
        auto v = static_cast<std::uint8_t>(rest_[0]);
        rest_.remove_prefix(1);
        return v;
    }
    std::uint16_t u16(const char* what)
    {
        if (rest_.size() < 2) {
            fail(std::string(what) + " runs past the end of the packet");
            rest_ = {};
            return 0;
        }
        auto v = static_cast<std::uint16_t>((static_cast<std::uint8_t>(rest_[0]) << 8) | static_cast<std::uint8_t>(rest_[1]));
        rest_.remove_prefix(2);
        return v;
    }
    // Two-byte length, then that many bytes.
    std::string bytes(const char* what)
    {
        auto n = u16(what);
        if (!ok())
            return {};
        if (rest_.size() < n) {
            fail(std::string(what) + " runs past the end of the packet");
            rest_ = {};
            return {};
        }
        std::string v(rest_.substr(0, n));
        rest_.remove_prefix(n);
        return v;
    }
    std::string text(const char* what)
    {
        auto v = bytes(what);
        if (ok() && !valid_mqtt_string(v))
            fail(std::string(what) + " is not valid UTF-8 or holds U+0000");
        return v;
    }
    std::string_view take_rest()
    {
        auto v = rest_;
        rest_ = {};
        return v;
    }

private:
    std::string_view rest_;
    std::string error_;
};

void put_u16(std::string& out, std::uint16_t v)
{
    out += static_cast<char>(v >> 8);
    out += static_cast<char>(v & 0xff);
}

void put_string(std::string& out, std::string_view s)
{
    put_u16(out, static_cast<std::uint16_t>(s.size()));
    out += s;
}

std::string packet(packet_type t, std::uint8_t flags, std::string_view body)
{
    std::string out;
    out += static_cast<char>((static_cast<std::uint8_t>(t) << 4) | (flags & 0x0f));
    out += encode_remaining_length(body.size());
    out += body;
    return out;
}

// The flags 3.1.1 fixes for each type (PUBLISH carries its own).
bool flags_allowed(packet_type t, std::uint8_t flags)
{
    switch (t) {
    case packet_type::publish:
        return ((flags >> 1) & 3) != 3; // QoS 3 is malformed
    case packet_type::pubrel:
    case packet_type::subscribe:
    case packet_type::unsubscribe:
        return flags == 0x2;
    default:
        return flags == 0;
    }
}

} // namespace

const char* to_string(packet_type t)
{
    switch (t) {
    case packet_type::connect: return "CONNECT";
    case packet_type::connack: return "CONNACK";
    case packet_type::publish: return "PUBLISH";
    case packet_type::puback: return "PUBACK";
    case packet_type::pubrec: return "PUBREC";
    case packet_type::pubrel: return "PUBREL";
    case packet_type::pubcomp: return "PUBCOMP";
    case packet_type::subscribe: return "SUBSCRIBE";
    case packet_type::suback: return "SUBACK";
    case packet_type::unsubscribe: return "UNSUBSCRIBE";
    case packet_type::unsuback: return "UNSUBACK";
    case packet_type::pingreq: return "PINGREQ";
    case packet_type::pingresp: return "PINGRESP";
    case packet_type::disconnect: return "DISCONNECT";
    }
    return "?";
}

bool valid_mqtt_string(std::string_view s)
{
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c == 0)
            return false;
        if (c < 0x80) {
            ++i;
            continue;
        }
        std::size_t n = 0;
        std::uint32_t cp = 0;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (s.size() - i <= n)
            return false;
        for (std::size_t k = 1; k <= n; ++k) {
            auto d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

std::string encode_remaining_length(std::size_t value)
{
    std::string out;
    do {
        auto digit = static_cast<std::uint8_t>(value % 128);
        value /= 128;
        if (value > 0)
            digit |= 0x80;
        out += static_cast<char>(digit);
    } while (value > 0 && out.size() < 4);
    return out;
}

frame_status peek_packet(std::string_view data, std::size_t max_packet, fixed_header& header, std::string& error)
{
    if (data.empty())
        return frame_status::incomplete;
    auto first = static_cast<std::uint8_t>(data[0]);
    auto type = first >> 4;
    if (type == 0 || type == 15) {
        error = "reserved packet type " + std::to_string(type);
        return frame_status::malformed;
    }
    header.type = static_cast<packet_type>(type);
    header.flags = first & 0x0f;
    if (!flags_allowed(header.type, header.flags)) {
        error = std::string("invalid fixed-header flags for ") + to_string(header.type);
        return frame_status::malformed;
    }
    std::size_t value = 0, multiplier = 1, i = 1;
    for (;; ++i) {
        if (i > 4) {
            error = "remaining length longer than 4 bytes";
            return frame_status::malformed;
        }
        if (i >= data.size())
            return frame_status::incomplete;
        auto digit = static_cast<std::uint8_t>(data[i]);
        value += (digit & 0x7f) * multiplier;
        multiplier *= 128;
        if (!(digit & 0x80))
            break;
    }
    header.header_size = i + 1;
    header.remaining = value;
    if (header.packet_size() > max_packet) {
        error = "packet of " + std::to_string(header.packet_size()) + " bytes exceeds the limit of " +
                std::to_string(max_packet);
        return frame_status::too_large;
    }
    return data.size() >= header.packet_size() ? frame_status::complete : frame_status::incomplete;
}

std::optional<connect_packet> parse_connect(const fixed_header& h, std::string_view body, std::string& error)
{
    reader r(body.substr(0, h.remaining));
    connect_packet c;
    c.protocol_name = r.text("protocol name");
    c.protocol_level = r.u8("protocol level");
    auto flags = r.u8("connect flags");
    c.keep_alive = r.u16("keep alive");
    if (!r.ok()) {
        error = r.error();
        return std::nullopt;
    }
    if (c.protocol_name != "MQTT" || c.protocol_level != 4) // answered with CONNACK 1 by the caller
        return c;
    if (flags & 0x01)
        r.fail("reserved connect flag is set");
    c.clean_session = flags & 0x02;
    c.will = flags & 0x04;
    c.will_qos = (flags >> 3) & 3;
    c.will_retain = flags & 0x20;
    bool has_password = flags & 0x40, has_username = flags & 0x80;
    if (!c.will && (c.will_qos || c.will_retain))
        r.fail("will QoS or retain set without a will");
    if (c.will_qos == 3)
        r.fail("will QoS 3");
    if (has_password && !has_username)
        r.fail("password without a user name");
    c.client_id = r.text("client identifier");
    if (c.will) {
        c.will_topic = r.text("will topic");
        c.will_message = r.bytes("will message");
    }
    if (has_username)
        c.username = r.text("user name");
    if (has_password)
        c.password = r.bytes("password");
    if (r.ok() && !r.at_end())
        r.fail("bytes after the CONNECT payload");
    if (!r.ok()) {
        error = r.error();
        return std::nullopt;
    }
    return c;
}

std::optional<publish_packet> parse_publish(const fixed_header& h, std::string_view body, std::string& error)
{
    reader r(body.substr(0, h.remaining));
    publish_packet p;
    p.retain = h.flags & 0x01;
    p.qos = (h.flags >> 1) & 3;
    p.dup = h.flags & 0x08;
    p.topic = r.text("topic name");
    if (p.qos > 0) {
        p.packet_id = r.u16("packet identifier");
        if (r.ok() && p.packet_id == 0)
            r.fail("packet identifier 0");
    }
    if (r.ok() && (p.topic.empty() || p.topic.find_first_of("+#") != std::string::npos))
        r.fail("topic name is empty or holds a wildcard");
    if (p.qos == 0 && p.dup)
        r.fail("DUP set on a QoS 0 PUBLISH");
    if (!r.ok()) {
        error = r.error();
        return std::nullopt;
    }
    p.payload = std::string(r.take_rest());
    return p;
}

std::optional<subscribe_packet> parse_subscribe(const fixed_header& h, std::string_view body, std::string& error)
{
    reader r(body.substr(0, h.remaining));
    subscribe_packet s;
    s.packet_id = r.u16("packet identifier");
    if (r.ok() && s.packet_id == 0)
        r.fail("packet identifier 0");
    while (r.ok() && !r.at_end()) {
        subscribe_packet::filter f;
        f.topic = r.text("topic filter");
        auto options = r.u8("requested QoS");
        if (r.ok() && (options & 0xfc))
            r.fail("reserved bits set in the requested QoS");
        if (r.ok() && f.topic.empty())
            r.fail("empty topic filter");
        f.qos = options & 3;
        if (r.ok() && f.qos == 3)
            r.fail("requested QoS 3");
        s.filters.push_back(std::move(f));
    }
    if (r.ok() && s.filters.empty())
        r.fail("SUBSCRIBE without a topic filter");
    if (!r.ok()) {
        error = r.error();
        return std::nullopt;
    }
    return s;
}

std::optional<unsubscribe_packet> parse_unsubscribe(const fixed_header& h, std::string_view body, std::string& error)
{
    reader r(body.substr(0, h.remaining));
    unsubscribe_packet u;
    u.packet_id = r.u16("packet identifier");
    if (r.ok() && u.packet_id == 0)
        r.fail("packet identifier 0");
    while (r.ok() && !r.at_end())
        u.topics.push_back(r.text("topic filter"));
    if (r.ok() && u.topics.empty())
        r.fail("UNSUBSCRIBE without a topic filter");
    if (!r.ok()) {
        error = r.error();
        return std::nullopt;
    }
    return u;
}

std::optional<std::uint16_t> parse_packet_id_only(const fixed_header& h, std::string_view body, std::string& error)
{
    if (h.remaining != 2) {
        error = std::string(to_string(h.type)) + " must be 2 bytes long";
        return std::nullopt;
    }
    reader r(body.substr(0, 2));
    return r.u16("packet identifier");
}

std::optional<std::pair<bool, std::uint8_t>> parse_connack(const fixed_header& h, std::string_view body, std::string& error)
{
    if (h.remaining != 2 || body.size() < 2 || (static_cast<std::uint8_t>(body[0]) & 0xfe)) {
        error = "malformed CONNACK";
        return std::nullopt;
    }
    return std::pair{(static_cast<std::uint8_t>(body[0]) & 1) != 0, static_cast<std::uint8_t>(body[1])};
}

std::optional<std::pair<std::uint16_t, std::vector<std::uint8_t>>> parse_suback(const fixed_header& h, std::string_view body,
                                                                                std::string& error)
{
    reader r(body.substr(0, h.remaining));
    auto id = r.u16("packet identifier");
    auto rest = r.take_rest();
    if (!r.ok() || rest.empty()) {
        error = r.ok() ? "SUBACK without a return code" : r.error();
        return std::nullopt;
    }
    std::vector<std::uint8_t> codes(rest.begin(), rest.end());
    return std::pair{id, std::move(codes)};
}

std::string encode_connack(bool session_present, std::uint8_t return_code)
{
    std::string body{static_cast<char>(session_present ? 1 : 0), static_cast<char>(return_code)};
    return packet(packet_type::connack, 0, body);
}

std::string encode_publish(const publish_packet& p)
{
    std::string body;
    put_string(body, p.topic);
    if (p.qos > 0)
        put_u16(body, p.packet_id);
    body += p.payload;
    auto flags = static_cast<std::uint8_t>((p.dup ? 0x08 : 0) | ((p.qos & 3) << 1) | (p.retain ? 1 : 0));
    return packet(packet_type::publish, flags, body);
}

std::string encode_puback(std::uint16_t packet_id)
{
    std::string body;
    put_u16(body, packet_id);
    return packet(packet_type::puback, 0, body);
}

std::string encode_suback(std::uint16_t packet_id, const std::vector<std::uint8_t>& return_codes)
{
    std::string body;
    put_u16(body, packet_id);
    for (auto c : return_codes)
        body += static_cast<char>(c);
    return packet(packet_type::suback, 0, body);
}

std::string encode_unsuback(std::uint16_t packet_id)
{
    std::string body;
    put_u16(body, packet_id);
    return packet(packet_type::unsuback, 0, body);
}

std::string encode_pingresp() { return packet(packet_type::pingresp, 0, {}); }
std::string encode_pingreq() { return packet(packet_type::pingreq, 0, {}); }
std::string encode_disconnect() { return packet(packet_type::disconnect, 0, {}); }

std::string encode_connect(const connect_packet& c)
{
    std::string body;
    put_string(body, c.protocol_name);
    body += static_cast<char>(c.protocol_level);
    std::uint8_t flags = (c.clean_session ? 0x02 : 0) | (c.will ? 0x04 : 0) | ((c.will_qos & 3) << 3) |
                         (c.will_retain ? 0x20 : 0) | (c.password ? 0x40 : 0) | (c.username ? 0x80 : 0);
    body += static_cast<char>(flags);
    put_u16(body, c.keep_alive);
    put_string(body, c.client_id);
    if (c.will) {
        put_string(body, c.will_topic);
        put_string(body, c.will_message);
    }
    if (c.username)
        put_string(body, *c.username);
    if (c.password)
        put_string(body, *c.password);
    return packet(packet_type::connect, 0, body);
}

std::string encode_subscribe(const subscribe_packet& s)
{
    std::string body;
    put_u16(body, s.packet_id);
    for (const auto& f : s.filters) {
        put_string(body, f.topic);
        body += static_cast<char>(f.qos);
    }
    return packet(packet_type::subscribe, 0x2, body);
}

std::string encode_unsubscribe(const unsubscribe_packet& u)
{
    std::string body;
    put_u16(body, u.packet_id);
    for (const auto& t : u.topics)
        put_string(body, t);
    return packet(packet_type::unsubscribe, 0x2, body);
}

} // namespace sg::mqtt
