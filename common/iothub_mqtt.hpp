#pragma once
// IoT Hub's device-streams conventions on top of MQTT (as the Azure IoT device SDKs speak them):
// the CONNECT user name, and the topics of a stream request and of the device's answer.
// Plain C++ (no I/O); unit tested and fuzzed with the codec.
#include <optional>
#include <string>
#include <string_view>

namespace sg::mqtt {

inline constexpr std::string_view streams_request_filter = "$iothub/streams/POST/#";
inline constexpr std::string_view streams_response_filter = "$iothub/streams/res/#";

// "{HostName}/{deviceId}/?api-version=…&DeviceClientType=…" (the query and even the trailing
// "/?…" optional, any parameters accepted); "{HostName}/{deviceId}/{moduleId}/?…" for a module.
struct iothub_user_name {
    std::string host, device_id, module_id, query;
};
std::optional<iothub_user_name> parse_user_name(std::string_view user_name, std::string& error);

// "$iothub/streams/POST/{streamName}/?$rid={rid}&$url={url}&$auth={token}", every value
// percent-encoded (the stream name too, so '+', '#' and '/' never reach a topic name).
std::string stream_request_topic(std::string_view stream_name, std::string_view rid, std::string_view url,
                                 std::string_view token);
struct stream_request_fields {
    std::string stream_name, rid, url, token;
};
// What a device reads back from a request topic (tests, the load generator).
std::optional<stream_request_fields> parse_stream_request_topic(std::string_view topic);

// "$iothub/streams/res/{status}/?$rid={rid}[&…]": 200 accepts, anything else rejects.
struct stream_response_fields {
    int status = 0;
    std::string rid;
};
std::optional<stream_response_fields> parse_stream_response_topic(std::string_view topic, std::string& error);
// "$iothub/streams/res/{status}/?$rid={rid}".
std::string stream_response_topic(int status, std::string_view rid);

// "wss://host/path" -> "wss://host:443/path"; a URL with a port (or not wss://) is returned as is.
std::string with_explicit_port(std::string_view url);

} // namespace sg::mqtt
