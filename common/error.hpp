#pragma once
// Errors as the relay reports them on the wire: {"errorCode": N, "message": "..."}, with the
// six-digit codes users of IoT Hub device streams know.
#include <string>

namespace sg {

namespace codes {
constexpr int none = 0;
constexpr int bad_request = 400000;
constexpr int invalid_device_id = 400001;
constexpr int connection_replaced = 400027;        // ConnectionForcefullyClosedOnNewConnection
constexpr int unauthorized = 401003;               // IoTHubUnauthorized
constexpr int device_not_found = 404001;           // DeviceNotFound
constexpr int device_not_online = 404103;          // DeviceNotOnline
constexpr int device_connection_closed = 404104;   // DeviceConnectionClosedRemotely
constexpr int route_not_found = 404000;
constexpr int method_not_allowed = 405000;
constexpr int already_exists = 409001;             // DeviceAlreadyExists
constexpr int precondition_failed = 412001;        // PreconditionFailed: ETag mismatch
constexpr int throttled = 429001;                  // ThrottlingException
constexpr int internal = 500001;
constexpr int relay_shutting_down = 503001;
constexpr int registry_unavailable = 503002;       // the registry's database cannot be reached
constexpr int gateway_timeout = 504101;            // the device did not answer in time
} // namespace error_code

// The name IoT Hub gave each code, for messages users can search for.
const char* error_name(int code);
// HTTP status for a code: its first three digits.
inline int http_status_of(int code) { return code / 1000; }

struct failure {
    int code = codes::none;
    std::string message;
    explicit operator bool() const { return code != codes::none || !message.empty(); }
    std::string describe() const; // "404103 DeviceNotOnline: ..." or the message alone
};

} // namespace sg
