#include "common/iothub_mqtt.hpp"

#include <charconv>
#include "common/crypto.hpp"

namespace sg::mqtt {

namespace {
constexpr std::string_view request_prefix = "$iothub/streams/POST/";
constexpr std::string_view response_prefix = "$iothub/streams/res/";
constexpr std::size_t max_user_name = 1024;
} // namespace

std::optional<iothub_user_name> parse_user_name(std::string_view user_name, std::string& error)
{
    if (user_name.size() > max_user_name) {
        error = "user name too long";
        return std::nullopt;
    }
    iothub_user_name u;
    // The query starts at the first "?" after the device id segment: a device id may hold '?'
    // itself, never '/', so the segments are cut at '/' and the query is what follows "/?".
    auto slash = user_name.find('/');
    if (slash == std::string_view::npos || slash == 0) {
        error = "user name is not {HostName}/{deviceId}/?api-version=...";
        return std::nullopt;
    }
    u.host = user_name.substr(0, slash);
    auto rest = user_name.substr(slash + 1);
    auto next = rest.find('/');
    u.device_id = rest.substr(0, next);
    rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
    if (!rest.empty() && rest.front() != '?') {
        next = rest.find('/');
        u.module_id = rest.substr(0, next);
        rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
        if (!rest.empty() && rest.front() != '?') {
            error = "user name has too many segments";
            return std::nullopt;
        }
    }
    if (!rest.empty())
        u.query = rest.substr(1);
    if (u.device_id.empty()) {
        error = "user name names no device";
        return std::nullopt;
    }
    return u;
}

std::string stream_request_topic(std::string_view stream_name, std::string_view rid, std::string_view url,
                                 std::string_view token)
{
    std::string topic(request_prefix);
    topic += url_encode(stream_name);
    topic += "/?$rid=" + url_encode(rid) + "&$url=" + url_encode(url) + "&$auth=" + url_encode(token);
    return topic;
}

std::optional<stream_request_fields> parse_stream_request_topic(std::string_view topic)
{
    if (!topic.starts_with(request_prefix))
        return std::nullopt;
    topic.remove_prefix(request_prefix.size());
    auto q = topic.find("/?");
    if (q == std::string_view::npos || q == 0)
        return std::nullopt;
    auto name = url_decode(topic.substr(0, q));
    auto query = topic.substr(q + 2);
    auto rid = query_value(query, "$rid");
    auto url = query_value(query, "$url");
    auto token = query_value(query, "$auth");
    if (!name || !rid || !url || !token)
        return std::nullopt;
    return stream_request_fields{*name, *rid, *url, *token};
}

std::optional<stream_response_fields> parse_stream_response_topic(std::string_view topic, std::string& error)
{
    if (!topic.starts_with(response_prefix)) {
        error = "not a stream response topic";
        return std::nullopt;
    }
    topic.remove_prefix(response_prefix.size());
    auto slash = topic.find('/');
    auto status_text = topic.substr(0, slash);
    stream_response_fields f;
    auto [p, ec] = std::from_chars(status_text.data(), status_text.data() + status_text.size(), f.status);
    if (status_text.empty() || status_text.size() > 3 || ec != std::errc{} || p != status_text.data() + status_text.size()) {
        error = "stream response status is not a number";
        return std::nullopt;
    }
    auto rest = slash == std::string_view::npos ? std::string_view{} : topic.substr(slash + 1);
    if (!rest.starts_with("?")) {
        error = "stream response has no ?$rid=";
        return std::nullopt;
    }
    auto rid = query_value(rest.substr(1), "$rid");
    if (!rid || rid->empty()) {
        error = "stream response has no $rid";
        return std::nullopt;
    }
    f.rid = std::move(*rid);
    return f;
}

std::string stream_response_topic(int status, std::string_view rid)
{
    return std::string(response_prefix) + std::to_string(status) + "/?$rid=" + url_encode(rid);
}

std::string with_explicit_port(std::string_view url)
{
    constexpr std::string_view scheme = "wss://";
    if (!url.starts_with(scheme))
        return std::string(url);
    auto authority_end = url.find('/', scheme.size());
    auto authority = url.substr(scheme.size(), authority_end == std::string_view::npos ? std::string_view::npos
                                                                                         : authority_end - scheme.size());
    // "[v6]:port", "[v6]", "host:port", "host"
    auto bracket = authority.rfind(']');
    auto colon = authority.rfind(':');
    bool has_port = colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket);
    if (has_port)
        return std::string(url);
    std::string out(url.substr(0, scheme.size() + authority.size()));
    out += ":443";
    if (authority_end != std::string_view::npos)
        out += url.substr(authority_end);
    return out;
}

} // namespace sg::mqtt
