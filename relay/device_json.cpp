#include "relay/device_json.hpp"

#include <boost/json.hpp>

namespace sg::relay {
namespace json = boost::json;

json::object to_json(const device_identity& d)
{
    // IoT Hub's shapes: absent values are null, never "" (SDK models and scripts test for null).
    auto or_null = [](const std::string& s) { return s.empty() ? json::value(nullptr) : json::value(s); };
    json::object auth{{"type", to_string(d.authentication)}};
    auth["symmetricKey"] = json::object{{"primaryKey", or_null(d.primary_key)}, {"secondaryKey", or_null(d.secondary_key)}};
    auth["x509Thumbprint"] = json::object{{"primaryThumbprint", or_null(d.primary_thumbprint)},
                                          {"secondaryThumbprint", or_null(d.secondary_thumbprint)}};
    return json::object{{"deviceId", d.device_id},
                        {"generationId", d.generation_id},
                        {"etag", d.etag},
                        {"status", to_string(d.status)},
                        {"statusReason", or_null(d.status_reason)},
                        {"statusUpdatedTime", d.status_updated_time},
                        {"connectionState", d.connected ? "Connected" : "Disconnected"},
                        {"connectionStateUpdatedTime", d.connection_state_updated_time},
                        {"lastActivityTime", d.last_activity_time},
                        {"cloudToDeviceMessageCount", 0}, // Streamgate carries no cloud-to-device messages
                        {"capabilities", json::object{{"iotEdge", false}}},
                        {"authentication", std::move(auth)}};
}

namespace {
const json::string* string_field(const json::object& o, std::string_view key)
{
    auto* v = o.if_contains(key);
    return v && v->is_string() ? &v->as_string() : nullptr;
}
} // namespace

std::string apply_json(device_identity& d, const json::value& body)
{
    if (!body.is_object())
        return "body must be a JSON object";
    const auto& o = body.as_object();
    if (auto* id = string_field(o, "deviceId"); id && *id != d.device_id)
        return "deviceId in the body does not match the URL";
    if (auto* v = o.if_contains("status")) {
        auto s = v->is_string() ? parse_device_status(v->as_string()) : std::nullopt;
        if (!s)
            return "status must be \"enabled\" or \"disabled\"";
        d.status = *s;
    }
    if (auto* reason = string_field(o, "statusReason"))
        d.status_reason = std::string(reason->subview().substr(0, 128));
    if (auto* a = o.if_contains("authentication")) {
        if (!a->is_object())
            return "authentication must be an object";
        const auto& ao = a->as_object();
        if (auto* type = ao.if_contains("type")) {
            auto t = type->is_string() ? parse_auth_type(type->as_string()) : std::nullopt;
            if (!t)
                return "authentication.type must be sas, selfSigned or certificateAuthority";
            d.authentication = *t;
        }
        if (auto* keys = ao.if_contains("symmetricKey"); keys && keys->is_object()) {
            if (auto* k = string_field(keys->as_object(), "primaryKey"))
                d.primary_key = std::string(*k);
            if (auto* k = string_field(keys->as_object(), "secondaryKey"))
                d.secondary_key = std::string(*k);
        }
        if (auto* prints = ao.if_contains("x509Thumbprint"); prints && prints->is_object()) {
            if (auto* t = string_field(prints->as_object(), "primaryThumbprint"))
                d.primary_thumbprint = std::string(*t);
            if (auto* t = string_field(prints->as_object(), "secondaryThumbprint"))
                d.secondary_thumbprint = std::string(*t);
        }
    }
    return {};
}

} // namespace sg::relay
