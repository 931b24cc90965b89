// libFuzzer target: the URL router, sg::relay::match_route (relay/router.hpp), on the whole input
// as a request target.
// Invariants checked:
//  - create_stream, device, device_control and bridge routes carry a device id that passes
//    sg::is_valid_device_id, never one containing '/' or NUL; their other parts are valid too;
//  - invalid routes carry a reason and no half-filled identity; other routes no reason;
//  - an encoded slash (%2F) in the path, or an overlong target, is always invalid;
//  - the query string is ignored;
//  - the URLs the clients and the relay build (url_encode of the id) route back to the same id.
#include "common/crypto.hpp"
#include "common/device_id.hpp"
#include "relay/router.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

using sg::relay::route;
using sg::relay::route_kind;

// Hub: [A-Za-z0-9_-]; stream id also '.' (a cluster node's "{nodeId}.{hex}"), never "." or "..".
bool token_segment(const std::string& s, bool dots = false)
{
    if (s.empty() || s.size() > 128 || s == "." || s == "..") return false;
    for (unsigned char c : s)
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_' ||
              (dots && c == '.')))
            return false;
    return true;
}

bool same(const route& a, const route& b)
{
    return a.kind == b.kind && a.device_id == b.device_id && a.stream_name == b.stream_name && a.hub == b.hub &&
           a.stream_id == b.stream_id && a.reason == b.reason;
}

void check_route(const route& r)
{
    switch (r.kind) {
    case route_kind::create_stream:
    case route_kind::device_control:
    case route_kind::bridge:
    case route_kind::device:
        SG_FUZZ_CHECK(sg::is_valid_device_id(r.device_id));
        SG_FUZZ_CHECK(r.device_id.find('/') == std::string::npos);
        SG_FUZZ_CHECK(r.device_id.find('\0') == std::string::npos);
        SG_FUZZ_CHECK(r.device_id != "." && r.device_id != "..");
        SG_FUZZ_CHECK(r.reason.empty());
        break;
    case route_kind::invalid:
        SG_FUZZ_CHECK(!r.reason.empty());
        SG_FUZZ_CHECK(r.device_id.empty() && r.stream_name.empty() && r.hub.empty() && r.stream_id.empty());
        return;
    case route_kind::device_list:
    case route_kind::not_found:
        SG_FUZZ_CHECK(r.reason.empty());
        SG_FUZZ_CHECK(r.device_id.empty() && r.stream_name.empty() && r.hub.empty() && r.stream_id.empty());
        return;
    }
    if (r.kind == route_kind::create_stream)
        SG_FUZZ_CHECK(sg::is_valid_stream_name(r.stream_name));
    else
        SG_FUZZ_CHECK(r.stream_name.empty());
    if (r.kind == route_kind::bridge)
        SG_FUZZ_CHECK(token_segment(r.hub) && token_segment(r.stream_id, true));
    else
        SG_FUZZ_CHECK(r.hub.empty() && r.stream_id.empty());
}

// The targets clients and the relay build for a device id (common/device_connection.cpp,
// common/client.cpp, relay/control.cpp) reach that same device.
void check_device_urls(const std::string& id)
{
    const std::string enc = sg::url_encode(id);
    route c = sg::relay::match_route("/devices/" + enc + "/streams");
    SG_FUZZ_CHECK(c.kind == route_kind::device_control && c.device_id == id);
    route d = sg::relay::match_route("/devices/" + enc);
    SG_FUZZ_CHECK(d.kind == route_kind::device && d.device_id == id);
    route s = sg::relay::match_route("/twins/" + enc + "/streams/ssh?api-version=2020-09-30");
    SG_FUZZ_CHECK(s.kind == route_kind::create_stream && s.device_id == id && s.stream_name == "ssh");
    route b = sg::relay::match_route("/bridges/hub_1/" + enc + "/AbC-_9");
    SG_FUZZ_CHECK(b.kind == route_kind::bridge && b.device_id == id && b.hub == "hub_1" && b.stream_id == "AbC-_9");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view target = sg_fuzz::as_text(data, size);
    const route r = sg::relay::match_route(target);
    check_route(r);

    const auto query = target.find('?');
    const std::string path = sg_fuzz::ascii_lower(target.substr(0, query));
    if (path.find("%2f") != std::string::npos || target.size() > 2048)
        SG_FUZZ_CHECK(r.kind == route_kind::invalid);

    if (query == std::string_view::npos && target.size() + 15 <= 2048) {
        SG_FUZZ_CHECK(same(r, sg::relay::match_route(std::string(target) + "?api-version=1")));
        SG_FUZZ_CHECK(same(r, sg::relay::match_route(std::string(target) + "?")));
    }

    if (!r.device_id.empty())
        check_device_urls(r.device_id);
    if (sg::is_valid_device_id(target))
        check_device_urls(std::string(target));
    return 0;
}
