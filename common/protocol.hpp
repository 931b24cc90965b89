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

// {"errorCode":N,"message":"..."}
std::string error_body(int code, std::string_view message);
// Reads an error body; falls back to the HTTP status and the raw text when it is not one.
failure parse_error_body(std::string_view body, int http_status);

// WebSocket close reasons carry "NNNNNN Name: message", cut to the 123 bytes a close frame allows.
std::string close_reason_text(int code, std::string_view message);
failure parse_close_reason(std::string_view reason);

} // namespace sg::protocol
