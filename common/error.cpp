#include "common/error.hpp"

namespace sg {

const char* error_name(int code)
{
    switch (code) {
    case codes::bad_request: return "BadRequest";
    case codes::invalid_device_id: return "InvalidDeviceId";
    case codes::connection_replaced: return "ConnectionForcefullyClosedOnNewConnection";
    case codes::unauthorized: return "IoTHubUnauthorized";
    case codes::device_not_found: return "DeviceNotFound";
    case codes::device_not_online: return "DeviceNotOnline";
    case codes::device_connection_closed: return "DeviceConnectionClosedRemotely";
    case codes::route_not_found: return "NotFound";
    case codes::method_not_allowed: return "MethodNotAllowed";
    case codes::already_exists: return "DeviceAlreadyExists";
    case codes::precondition_failed: return "PreconditionFailed";
    case codes::throttled: return "ThrottlingException";
    case codes::internal: return "ServerError";
    case codes::relay_shutting_down: return "ServiceUnavailable";
    case codes::registry_unavailable: return "RegistryUnavailable";
    case codes::gateway_timeout: return "GatewayTimeout";
    default: return "Error";
    }
}

std::string failure::describe() const
{
    if (code == codes::none)
        return message;
    return std::to_string(code) + " " + error_name(code) + ": " + message;
}

} // namespace sg
