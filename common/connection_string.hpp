#pragma once
// Connection strings in the IoT Hub shape:
//   device:  HostName=host[:port];DeviceId=id;SharedAccessKey=base64[;x509=true]
//   service: HostName=host[:port];SharedAccessKeyName=policy;SharedAccessKey=base64
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace sg {

struct config_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct connection_string {
    std::string host_name;               // as written, may carry ":port"
    std::string device_id;               // empty for a service connection string
    std::string shared_access_key_name;  // empty for a device connection string
    std::string shared_access_key;       // base64; empty when x509
    bool x509 = false;

    bool is_device() const { return !device_id.empty(); }
    std::string host() const;            // host without port (brackets stripped for IPv6)
    std::uint16_t port() const;          // 443 when not given
    std::string to_string() const;       // canonical form, keys in the order above
};

// Keys are case-insensitive, values are kept as written, unknown keys are rejected.
// Throws config_error naming what is wrong (never echoing the key).
connection_string parse_connection_string(std::string_view text);

} // namespace sg
