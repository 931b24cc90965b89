#include "relay/router.hpp"

#include <cctype>
#include <vector>
#include "common/crypto.hpp"
#include "common/device_id.hpp"

namespace sg::relay {

namespace {

constexpr std::size_t max_target = 2048;

bool split_segments(std::string_view path, std::vector<std::string>& out, std::string& reason)
{
    if (path.empty() || path.front() != '/') {
        reason = "request target must be an absolute path";
        return false;
    }
    path.remove_prefix(1);
    while (!path.empty()) {
        auto slash = path.find('/');
        auto raw = path.substr(0, slash);
        auto decoded = url_decode(raw);
        if (!decoded || decoded->find('/') != std::string::npos || decoded->find('\0') != std::string::npos) {
            reason = "malformed path segment";
            return false;
        }
        out.push_back(std::move(*decoded));
        if (slash == std::string_view::npos)
            break;
        path.remove_prefix(slash + 1);
    }
    return true;
}

route invalid(std::string reason) { return route{route_kind::invalid, {}, {}, {}, {}, std::move(reason)}; }

bool valid_token_segment(const std::string& s, bool dots)
{
    if (s.empty() || s.size() > 128 || s == "." || s == "..")
        return false;
    for (unsigned char c : s)
        if (!(std::isalnum(c) || c == '-' || c == '_' || (dots && c == '.')))
            return false;
    return true;
}

bool valid_hub_segment(const std::string& s) { return valid_token_segment(s, false); }
// A cluster node's stream ids are "{nodeId}.{hex}" (node ids may hold '.' too).
bool valid_stream_id_segment(const std::string& s) { return valid_token_segment(s, true); }

} // namespace

route match_route(std::string_view target)
{
    if (target.size() > max_target)
        return invalid("request target too long");
    auto query = target.find('?');
    std::vector<std::string> seg;
    std::string reason;
    if (!split_segments(target.substr(0, query), seg, reason))
        return invalid(reason);

    auto with_device = [&](route_kind kind, const std::string& id) {
        if (!is_valid_device_id(id))
            return invalid("invalid device id");
        route r;
        r.kind = kind;
        r.device_id = id;
        return r;
    };

    if (seg.size() == 4 && seg[0] == "twins" && seg[2] == "streams") {
        if (!is_valid_stream_name(seg[3]))
            return invalid("invalid stream name");
        route r = with_device(route_kind::create_stream, seg[1]);
        if (r.kind != route_kind::invalid)
            r.stream_name = seg[3];
        return r;
    }
    if (seg.size() == 3 && seg[0] == "devices" && seg[2] == "streams")
        return with_device(route_kind::device_control, seg[1]);
    if (seg.size() == 4 && seg[0] == "bridges") {
        if (!valid_hub_segment(seg[1]) || !valid_stream_id_segment(seg[3]))
            return invalid("malformed streaming endpoint");
        route r = with_device(route_kind::bridge, seg[2]);
        if (r.kind != route_kind::invalid) {
            r.hub = seg[1];
            r.stream_id = seg[3];
        }
        return r;
    }
    if (seg.size() == 2 && seg[0] == "$iothub" && seg[1] == "websocket")
        return route{route_kind::mqtt_websocket};
    if (seg.size() == 2 && seg[0] == "devices")
        return with_device(route_kind::device, seg[1]);
    if (seg.size() == 1 && seg[0] == "devices")
        return route{route_kind::device_list};
    return route{};
}

} // namespace sg::relay
