#include <catch2/catch.hpp>

#include "relay/router.hpp"

#include <string>

using namespace sg::relay;
using namespace std::string_literals;

namespace {

const char* kind_name(route_kind k)
{
    switch (k) {
    case route_kind::create_stream: return "create_stream";
    case route_kind::device_control: return "device_control";
    case route_kind::bridge: return "bridge";
    case route_kind::device: return "device";
    case route_kind::device_list: return "device_list";
    case route_kind::mqtt_websocket: return "mqtt_websocket";
    case route_kind::invalid: return "invalid";
    case route_kind::not_found: return "not_found";
    }
    return "?";
}

// Checks a target is refused as invalid with exactly `reason`. The exact text matters: the server
// (relay/server.cpp) answers 400001 InvalidDeviceId when the reason is "invalid device id" and
// 400000 BadRequest otherwise.
void require_invalid(const std::string& target, const std::string& reason)
{
    auto r = match_route(target);
    INFO("target: " << target.substr(0, 120) << (target.size() > 120 ? "..." : "") << " -> " << kind_name(r.kind)
                    << " reason: " << r.reason);
    REQUIRE(r.kind == route_kind::invalid);
    CHECK(r.reason == reason);
    // A refused id is never handed on as if it were accepted.
    CHECK(r.device_id.empty());
}

void require_not_found(const std::string& target)
{
    auto r = match_route(target);
    INFO("target: " << target << " -> " << kind_name(r.kind) << " reason: " << r.reason);
    REQUIRE(r.kind == route_kind::not_found);
    CHECK(r.device_id.empty());
}

} // namespace

TEST_CASE("router: create_stream", "[router]")
{
    auto r = match_route("/twins/dev1/streams/ssh");
    REQUIRE(r.kind == route_kind::create_stream);
    CHECK(r.device_id == "dev1");
    CHECK(r.stream_name == "ssh");
    CHECK(r.hub.empty());
    CHECK(r.stream_id.empty());
    CHECK(r.reason.empty());
}

TEST_CASE("router: device_control", "[router]")
{
    auto r = match_route("/devices/dev-1/streams");
    REQUIRE(r.kind == route_kind::device_control);
    CHECK(r.device_id == "dev-1");
    CHECK(r.stream_name.empty());
    CHECK(r.reason.empty());
}

TEST_CASE("router: bridge", "[router]")
{
    auto r = match_route("/bridges/my_hub-1/dev1/AbC-123_x");
    REQUIRE(r.kind == route_kind::bridge);
    CHECK(r.hub == "my_hub-1");
    CHECK(r.device_id == "dev1");
    CHECK(r.stream_id == "AbC-123_x");
    CHECK(r.stream_name.empty());
    CHECK(r.reason.empty());
}

TEST_CASE("router: the MQTT-over-WebSocket endpoint", "[router]")
{
    CHECK(match_route("/$iothub/websocket").kind == route_kind::mqtt_websocket);
    CHECK(match_route("/%24iothub/websocket?iothub-no-client-cert=true").kind == route_kind::mqtt_websocket);
    require_not_found("/$iothub/websocket/x");
    require_not_found("/$iothub");
    require_not_found("/iothub/websocket");
}

TEST_CASE("router: device and device_list", "[router]")
{
    auto d = match_route("/devices/dev1");
    REQUIRE(d.kind == route_kind::device);
    CHECK(d.device_id == "dev1");

    auto l = match_route("/devices");
    REQUIRE(l.kind == route_kind::device_list);
    CHECK(l.device_id.empty());
}

TEST_CASE("router: device ids using the whole IoT Hub character set", "[router]")
{
    // All of - . + % _ # * ! ( ) , : = @ $ are legal in a device id; '%' must arrive escaped.
    auto r = match_route("/devices/a-b.c+d%25e_f*g!h(i)j,k:l=m@n$o");
    REQUIRE(r.kind == route_kind::device);
    CHECK(r.device_id == "a-b.c+d%e_f*g!h(i)j,k:l=m@n$o");

    // A 128-character id is the maximum; 129 is refused.
    std::string id128(128, 'x');
    auto ok = match_route("/devices/" + id128 + "/streams");
    REQUIRE(ok.kind == route_kind::device_control);
    CHECK(ok.device_id == id128);
    require_invalid("/devices/" + std::string(129, 'x') + "/streams", "invalid device id");
}

TEST_CASE("router: query strings are ignored", "[router]")
{
    auto c = match_route("/twins/dev1/streams/ssh?api-version=2020-09-30");
    REQUIRE(c.kind == route_kind::create_stream);
    CHECK(c.device_id == "dev1");
    CHECK(c.stream_name == "ssh");

    auto ctl = match_route("/devices/dev1/streams?api-version=2020-09-30");
    REQUIRE(ctl.kind == route_kind::device_control);
    CHECK(ctl.device_id == "dev1");

    auto b = match_route("/bridges/hub/dev1/sid?api-version=2020-09-30&x=%2F");
    REQUIRE(b.kind == route_kind::bridge);
    CHECK(b.stream_id == "sid");

    auto d = match_route("/devices/dev1?api-version=2020-09-30");
    REQUIRE(d.kind == route_kind::device);
    CHECK(d.device_id == "dev1");

    auto l = match_route("/devices?api-version=2020-09-30");
    CHECK(l.kind == route_kind::device_list);

    // An empty query and a query holding things that would be bad in a path.
    CHECK(match_route("/devices?").kind == route_kind::device_list);
    CHECK(match_route("/devices?a=/../%00").kind == route_kind::device_list);
}

TEST_CASE("router: segments are percent-decoded exactly once", "[router]")
{
    auto r = match_route("/twins/My%2BDevice/streams/x");
    REQUIRE(r.kind == route_kind::create_stream);
    CHECK(r.device_id == "My+Device");
    CHECK(r.stream_name == "x");

    // Lower-case hex too.
    auto lc = match_route("/devices/a%3ab");
    REQUIRE(lc.kind == route_kind::device);
    CHECK(lc.device_id == "a:b");

    // An escaped '?' is part of the id, not the start of a query.
    auto q = match_route("/devices/a%3Fb/streams");
    REQUIRE(q.kind == route_kind::device_control);
    CHECK(q.device_id == "a?b");

    // The stream name is decoded as well.
    auto s = match_route("/twins/dev1/streams/s%2Bt");
    REQUIRE(s.kind == route_kind::create_stream);
    CHECK(s.stream_name == "s+t");

    // Decoding happens once: %252F is the three characters "%2F", a legal id, not a slash.
    auto once = match_route("/devices/%252F");
    REQUIRE(once.kind == route_kind::device);
    CHECK(once.device_id == "%2F");

    // The fixed words may be escaped too ("streams" = %73treams): decoded before matching.
    auto w = match_route("/devices/dev1/%73treams");
    REQUIRE(w.kind == route_kind::device_control);
    CHECK(w.device_id == "dev1");
}

TEST_CASE("router: an escaped slash makes the route invalid, never another route", "[router]")
{
    // "/devices/a%2Fstreams" must not become the control endpoint of device "a".
    require_invalid("/devices/a%2Fstreams", "malformed path segment");
    require_invalid("/devices/a%2fstreams", "malformed path segment");
    require_invalid("/twins/a%2Fb/streams/x", "malformed path segment");
    require_invalid("/twins/dev1/streams/x%2Fy", "malformed path segment");
    require_invalid("/bridges/hub/dev%2F1/sid", "malformed path segment");
    // Even where the unescaped path would not be a route at all.
    require_invalid("/devices%2Fdev1", "malformed path segment");
}

TEST_CASE("router: malformed percent escapes are invalid", "[router]")
{
    require_invalid("/devices/a%", "malformed path segment");
    require_invalid("/devices/a%4", "malformed path segment");
    require_invalid("/devices/a%G1", "malformed path segment");
    require_invalid("/devices/%zz/streams", "malformed path segment");
}

TEST_CASE("router: dot segments are not device ids or stream names", "[router]")
{
    require_invalid("/devices/..", "invalid device id");
    require_invalid("/devices/.", "invalid device id");
    require_invalid("/devices/../streams", "invalid device id");
    require_invalid("/devices/./streams", "invalid device id");
    require_invalid("/twins/../streams/ssh", "invalid device id");
    require_invalid("/bridges/hub/../sid", "invalid device id");
    // Escaped dots decode to the same thing.
    require_invalid("/devices/%2E%2E/streams", "invalid device id");
    require_invalid("/devices/%2e", "invalid device id");
    // Stream names follow the same rule.
    require_invalid("/twins/dev1/streams/..", "invalid stream name");
    require_invalid("/twins/dev1/streams/.", "invalid stream name");
    // Dots inside a longer id are fine.
    auto r = match_route("/devices/a..b");
    REQUIRE(r.kind == route_kind::device);
    CHECK(r.device_id == "a..b");
}

TEST_CASE("router: empty segments", "[router]")
{
    require_invalid("/devices//streams", "invalid device id");
    require_invalid("/twins//streams/ssh", "invalid device id");
    // "streams//" leaves an empty fourth segment: an empty stream name.
    require_invalid("/twins/dev1/streams//", "invalid stream name");
    require_invalid("/bridges/hub/dev1//", "malformed streaming endpoint");
    // One trailing slash ends the path (no empty segment after it).
    CHECK(match_route("/devices/").kind == route_kind::device_list);
    auto ctl = match_route("/devices/dev1/streams/");
    REQUIRE(ctl.kind == route_kind::device_control);
    CHECK(ctl.device_id == "dev1");
}

TEST_CASE("router: overlong targets are invalid", "[router]")
{
    std::string pad(2100, 'a');
    require_invalid("/devices/" + pad, "request target too long");
    require_invalid("/devices?" + pad, "request target too long"); // the limit applies to the whole target, query included

    // 2048 bytes exactly is not "too long" (it fails on the id length instead).
    std::string exact = "/devices/" + std::string(2048 - 9, 'a');
    REQUIRE(exact.size() == 2048);
    require_invalid(exact, "invalid device id");
    std::string over = exact + "a";
    require_invalid(over, "request target too long");

    // A long query on a short path, within the limit, is still ignored.
    std::string q = "/devices?" + std::string(2000, 'q');
    CHECK(match_route(q).kind == route_kind::device_list);
}

TEST_CASE("router: NUL bytes are invalid", "[router]")
{
    require_invalid("/devices/a%00b", "malformed path segment");
    require_invalid("/devices/%00/streams", "malformed path segment");
    require_invalid("/twins/dev1/streams/ssh%00", "malformed path segment");
    // A raw NUL in the target (string_view with embedded NUL).
    require_invalid("/devices/a\0b"s, "malformed path segment");
    require_invalid("/devices/\0/streams"s, "malformed path segment");
}

TEST_CASE("router: non-ASCII and invalid UTF-8 device ids are invalid", "[router]")
{
    require_invalid("/devices/d%C3%A9v", "invalid device id");        // "dév", valid UTF-8
    require_invalid("/devices/d\xC3\xA9v/streams", "invalid device id"); // raw UTF-8
    require_invalid("/devices/%FF%FE", "invalid device id");          // not UTF-8 at all
    require_invalid("/devices/\xFF/streams", "invalid device id");
    require_invalid("/twins/%C0%AF/streams/ssh", "invalid device id"); // overlong '/' encoding
    require_invalid("/bridges/hub/%E2%80%AE/sid", "invalid device id");
    require_invalid("/twins/dev1/streams/%C3%A9", "invalid stream name");
    // Other characters IoT Hub does not allow.
    require_invalid("/devices/a%20b", "invalid device id");
    require_invalid("/devices/a;b", "invalid device id");
    require_invalid("/devices/a%5Cb", "invalid device id"); // backslash
}

TEST_CASE("router: bridge hub is restricted to [A-Za-z0-9_-], streamId to [A-Za-z0-9_.-]", "[router]")
{
    for (const char* bad_hub : {"hub.x", "hub%2Ex", "h+b", "h%40b", "h%C3%A9", "~hub", "h:b"}) {
        require_invalid("/bridges/"s + bad_hub + "/dev1/sid", "malformed streaming endpoint");
    }
    for (const char* bad_sid : {"s+i", "s%20i", "s%C3%A9", "s*i", "..", "."}) {
        require_invalid("/bridges/hub/dev1/"s + bad_sid, "malformed streaming endpoint");
    }
    require_invalid("/bridges//dev1/sid", "malformed streaming endpoint");
    // A cluster node's stream id names the node: "{nodeId}.{hex}".
    auto clustered = match_route("/bridges/hub/dev1/n1.eu-west.0123abcd");
    REQUIRE(clustered.kind == route_kind::bridge);
    CHECK(clustered.stream_id == "n1.eu-west.0123abcd");
    // 128 characters is the maximum.
    auto ok = match_route("/bridges/" + std::string(128, 'h') + "/dev1/" + std::string(128, 's'));
    REQUIRE(ok.kind == route_kind::bridge);
    CHECK(ok.hub.size() == 128);
    CHECK(ok.stream_id.size() == 128);
    require_invalid("/bridges/" + std::string(129, 'h') + "/dev1/sid", "malformed streaming endpoint");
    require_invalid("/bridges/hub/dev1/" + std::string(129, 's'), "malformed streaming endpoint");
    // The device id in the middle follows the device id rules (which do allow '.').
    auto dotted = match_route("/bridges/hub/dev.1/sid");
    REQUIRE(dotted.kind == route_kind::bridge);
    CHECK(dotted.device_id == "dev.1");
    require_invalid("/bridges/hub/d%20v/sid", "invalid device id");
}

TEST_CASE("router: unknown paths are not_found", "[router]")
{
    require_not_found("/");
    require_not_found("/foo");
    require_not_found("/twins");
    require_not_found("/twins/dev1");
    require_not_found("/twins/dev1/streams");
    require_not_found("/twins/dev1/other/ssh");
    require_not_found("/twins/dev1/streams/ssh/extra");
    require_not_found("/devices/dev1/streams/extra");
    require_not_found("/devices/dev1/other");
    require_not_found("/bridges");
    require_not_found("/bridges/hub/dev1");
    require_not_found("/bridges/hub/dev1/"); // trailing slash: still three segments
    require_not_found("/bridges/hub/dev1/sid/extra");
    require_not_found("/Devices");        // case-sensitive fixed words
    require_not_found("/TWINS/dev1/streams/ssh");
    require_not_found("//devices");
    require_not_found("/api/devices");
}

TEST_CASE("router: a target without a leading slash is invalid", "[router]")
{
    require_invalid("", "request target must be an absolute path");
    require_invalid("devices", "request target must be an absolute path");
    require_invalid("devices/dev1/streams", "request target must be an absolute path");
    require_invalid("twins/dev1/streams/ssh", "request target must be an absolute path");
    require_invalid("?api-version=2020-09-30", "request target must be an absolute path");
    require_invalid("*", "request target must be an absolute path");
    require_invalid("https://host/devices/dev1", "request target must be an absolute path");
    require_invalid("%2Fdevices", "request target must be an absolute path");
}
