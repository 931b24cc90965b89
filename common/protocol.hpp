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
struct join_message {
    std::string path;
    std::string authorization;
};
std::string serialize(const join_message& m);
std::optional<join_message> parse_join(std::string_view text, std::string& error);
// relay -> proxy once the join holds: {"type":"joined","streamId":".."}
std::string joined_message(std::string_view stream_id);
bool is_joined_message(std::string_view text);

// {"errorCode":N,"message":"..."}
std::string error_body(int code, std::string_view message);
// Reads an error body; falls back to the HTTP status and the raw text when it is not one.
failure parse_error_body(std::string_view body, int http_status);

// WebSocket close reasons carry "NNNNNN Name: message", cut to the 123 bytes a close frame allows.
std::string close_reason_text(int code, std::string_view message);
failure parse_close_reason(std::string_view reason);

} // namespace sg::protocol
