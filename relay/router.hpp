#pragma once
// Maps a request target to what the relay serves there. No I/O: unit tested and fuzzed.
#include <string>
#include <string_view>

namespace sg::relay {

enum class route_kind {
    create_stream,   // POST /twins/{deviceId}/streams/{streamName}
    device_control,  // GET  /devices/{deviceId}/streams        (WebSocket upgrade)
    bridge,          // GET  /bridges/{hub}/{deviceId}/{streamId} (WebSocket upgrade)
    mqtt_websocket,  // GET  /$iothub/websocket                  (WebSocket upgrade, MQTT inside)
    device,          // GET|PUT|DELETE /devices/{deviceId}
    device_list,     // GET  /devices
    invalid,         // a path of a known shape with a bad part (reason says which)
    not_found,
};

struct route {
    route_kind kind = route_kind::not_found;
    std::string device_id;
    std::string stream_name;
    std::string hub;
    std::string stream_id;
    std::string reason; // for invalid
};

// Query strings are ignored (clients send ?api-version=...). Segments are percent-decoded
// once; a decoded '/' or an invalid device id makes the route invalid, never a different path.
route match_route(std::string_view target);

} // namespace sg::relay
