#pragma once
// The messages on Streamgate's wire that are not HTTP headers: control-connection JSON
// messages, error bodies, close reasons. docs/PROTOCOL.md describes each one.
#include <optional>
#include <string>
#include <string_view>
#include "common/error.hpp"

namespace sg::protocol {

constexpr int version = 1;

// relay -> device: {"type":"streamRequest","requestId":..,"streamName":..,"streamId":..,"url":..,"authorizationToken":..}
struct stream_request_message {
    std::string request_id;
    std::string stream_name;
    std::string stream_id;
    std::string url;
    std::string authorization_token;
    int lane = -1; // optional on the wire ("lane"): the relay thread of the stream, -1 when not said
};

// device -> relay: {"type":"streamResponse","requestId":..,"accepted":true|false,"reason":..}
struct stream_response_message {
    std::string request_id;
    bool accepted = false;
    std::string reason;
};

std::string serialize(const stream_request_message& m);
std::string serialize(const stream_response_message& m);

// nullopt with error set when the text is not valid JSON of the expected shape.
std::optional<stream_request_message> parse_stream_request(std::string_view text, std::string& error);
std::optional<stream_response_message> parse_stream_response(std::string_view text, std::string& error);

// A stream's connection kept for the next stream (docs/PROTOCOL.md, "Connections kept for the next
// stream"). A proxy's join sends this header with "1"; the relay's 101 answers it with the thread
// ("lane") the connection lives on when it keeps the connection after a clean end of stream.
constexpr std::string_view reuse_header = "x-streamgate-reuse";
// The stream's lane: the POST's answer (header) and the device's streamRequest ("lane") say it,
// so a proxy can join on a kept connection of the same lane (both sides then share a thread).
constexpr std::string_view lane_header = "x-streamgate-lane";

// proxy -> relay on a kept connection: {"type":"join","path":"/bridges/...","authorization":"Bearer ..."}
// A device may answer its stream request in the same message: "accept":"{requestId}".
struct join_message {
    std::string path;
    std::string authorization;
    std::string accept_request_id; // empty: no answer in it
};
std::string serialize(const join_message& m);
std::optional<join_message> parse_join(std::string_view text, std::string& error);
// relay -> proxy once the join holds: {"type":"joined","streamId":".."}
std::string joined_message(std::string_view stream_id);
bool is_joined_message(std::string_view text);

// service proxy -> relay on a kept connection: the stream request and the join in one message,
// {"type":"open","deviceId":..,"streamName":..,"authorization":"SharedAccessSignature ..",
//  "connectTimeout":S,"responseTimeout":S}; the relay answers "joined" (accepted, and this
// connection is the service side), or one of the two below and keeps the connection.
struct open_message {
    std::string device_id;
    std::string stream_name;
    std::string authorization;
    int connect_timeout = 60;
    int response_timeout = 60;
};
std::string serialize(const open_message& m);
std::optional<open_message> parse_open(std::string_view text, std::string& error);
// The type of a message on a kept connection ("join", "open", ...); empty when it has none.
std::string message_type(std::string_view text);

// relay -> proxy: {"type":"rejected","reason":".."} (the device said no) or
// {"type":"error","errorCode":N,"message":".."} (what the POST would have answered).
std::string rejected_message(std::string_view reason);
std::string open_error_message(const failure& f);
struct open_answer {
    bool joined = false;
    bool rejected = false;
    std::string reason; // rejected: the device's reason
    failure error;      // neither: what failed
};
// nullopt when the text is none of the three.
std::optional<open_answer> parse_open_answer(std::string_view text);

// {"errorCode":N,"message":"..."}
std::string error_body(int code, std::string_view message);
// Reads an error body; falls back to the HTTP status and the raw text when it is not one.
failure parse_error_body(std::string_view body, int http_status);

// WebSocket close reasons carry "NNNNNN Name: message", cut to the 123 bytes a close frame allows.
std::string close_reason_text(int code, std::string_view message);
failure parse_close_reason(std::string_view reason);

} // namespace sg::protocol
