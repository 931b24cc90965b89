#pragma once
// Devices as JSON, in the shape of IoT Hub's identity registry (admin CLI and REST API).
#include <string>
#include <boost/json/object.hpp>
#include "relay/registry.hpp"

namespace sg::relay {

boost::json::object to_json(const device_identity& d);
// Applies the writable fields of a PUT body (status, statusReason, authentication) to d.
// Returns an error message, empty on success.
std::string apply_json(device_identity& d, const boost::json::value& body);

} // namespace sg::relay
