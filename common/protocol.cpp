#include "common/protocol.hpp"

#include <boost/json.hpp>

namespace sg::protocol {
namespace json = boost::json;

namespace {

// Cuts text to at most max bytes without splitting a UTF-8 sequence (close reasons must stay valid UTF-8).
std::string truncate_utf8(std::string_view text, std::size_t max)
{
    if (text.size() <= max)
        return std::string(text);
    std::size_t end = max;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
        --end;
    return std::string(text.substr(0, end));
}

std::optional<json::object> parse_object(std::string_view text, std::string& error)
{
    json::error_code ec;
    json::parse_options options;
    options.max_depth = 8;
    json::value v = json::parse(text, ec, {}, options);
    if (ec) {
        error = "malformed JSON: " + ec.message();
        return std::nullopt;
    }
    if (!v.is_object()) {
        error = "expected a JSON object";
        return std::nullopt;
    }
    return std::move(v.as_object());
}

bool get_string(const json::object& o, std::string_view key, std::string& out, std::string& error, bool required = true)
{
    auto it = o.find(key);
    if (it == o.end()) {
        if (required)
            error = "missing \"" + std::string(key) + "\"";
        return !required;
    }
    if (!it->value().is_string()) {
        error = "\"" + std::string(key) + "\" must be a string";
        return false;
    }
    out = std::string(it->value().as_string());
    return true;
}

bool check_type(const json::object& o, std::string_view type, std::string& error)
{
    std::string actual;
    if (!get_string(o, "type", actual, error))
        return false;
    if (actual != type) {
        error = "unexpected message type \"" + truncate_utf8(actual, 32) + "\"";
        return false;
    }
    return true;
}

} // namespace

std::string serialize(const stream_request_message& m)
{
    json::object o{{"type", "streamRequest"},
                   {"requestId", m.request_id},
                   {"streamName", m.stream_name},
                   {"streamId", m.stream_id},
                   {"url", m.url},
                   {"authorizationToken", m.authorization_token}};
    if (m.lane >= 0)
        o["lane"] = m.lane;
    return json::serialize(o);
}

std::string serialize(const stream_response_message& m)
{
    json::object o{{"type", "streamResponse"}, {"requestId", m.request_id}, {"accepted", m.accepted}};
    if (!m.accepted)
        o["reason"] = m.reason;
    return json::serialize(o);
}

std::optional<stream_request_message> parse_stream_request(std::string_view text, std::string& error)
{
    auto o = parse_object(text, error);
    if (!o || !check_type(*o, "streamRequest", error))
        return std::nullopt;
    stream_request_message m;
    if (!get_string(*o, "requestId", m.request_id, error) || !get_string(*o, "streamName", m.stream_name, error) ||
        !get_string(*o, "streamId", m.stream_id, error) || !get_string(*o, "url", m.url, error) ||
        !get_string(*o, "authorizationToken", m.authorization_token, error))
        return std::nullopt;
    // A hint only: a lane that is no small number is as good as none.
    if (auto it = o->find("lane"); it != o->end() && it->value().is_int64() && it->value().as_int64() >= 0 &&
                                   it->value().as_int64() < 4096)
        m.lane = static_cast<int>(it->value().as_int64());
    return m;
}

std::optional<stream_response_message> parse_stream_response(std::string_view text, std::string& error)
{
    auto o = parse_object(text, error);
    if (!o || !check_type(*o, "streamResponse", error))
        return std::nullopt;
    stream_response_message m;
    if (!get_string(*o, "requestId", m.request_id, error) || !get_string(*o, "reason", m.reason, error, false))
        return std::nullopt;
    auto it = o->find("accepted");
    if (it == o->end() || !it->value().is_bool()) {
        error = "\"accepted\" must be true or false";
        return std::nullopt;
    }
    m.accepted = it->value().as_bool();
    m.reason = truncate_utf8(m.reason, 1024);
    return m;
}

std::string serialize(const join_message& m)
{
    json::object o{{"type", "join"}, {"path", m.path}, {"authorization", m.authorization}};
    if (!m.accept_request_id.empty())
        o["accept"] = m.accept_request_id;
    return json::serialize(o);
}

std::optional<join_message> parse_join(std::string_view text, std::string& error)
{
    auto o = parse_object(text, error);
    if (!o || !check_type(*o, "join", error))
        return std::nullopt;
    join_message m;
    if (!get_string(*o, "path", m.path, error) || !get_string(*o, "authorization", m.authorization, error) ||
        !get_string(*o, "accept", m.accept_request_id, error, false))
        return std::nullopt;
    return m;
}

std::string joined_message(std::string_view stream_id)
{
    return json::serialize(json::object{{"type", "joined"}, {"streamId", stream_id}});
}


std::string serialize(const open_message& m)
{
    return json::serialize(json::object{{"type", "open"},
                                        {"deviceId", m.device_id},
                                        {"streamName", m.stream_name},
                                        {"authorization", m.authorization},
                                        {"connectTimeout", m.connect_timeout},
                                        {"responseTimeout", m.response_timeout}});
}

std::optional<open_message> parse_open(std::string_view text, std::string& error)
{
    auto o = parse_object(text, error);
    if (!o || !check_type(*o, "open", error))
        return std::nullopt;
    open_message m;
    if (!get_string(*o, "deviceId", m.device_id, error) || !get_string(*o, "streamName", m.stream_name, error) ||
        !get_string(*o, "authorization", m.authorization, error))
        return std::nullopt;
    for (auto [key, out] : {std::pair{"connectTimeout", &m.connect_timeout}, {"responseTimeout", &m.response_timeout}}) {
        auto it = o->find(key);
        if (it == o->end())
            continue;
        if (!it->value().is_int64() || it->value().as_int64() < 1 || it->value().as_int64() > 300) {
            error = "\"" + std::string(key) + "\" must be a number of seconds from 1 to 300";
            return std::nullopt;
        }
        *out = static_cast<int>(it->value().as_int64());
    }
    return m;
}

std::string message_type(std::string_view text)
{
    std::string error, type;
    auto o = parse_object(text, error);
    if (o)
        get_string(*o, "type", type, error);
    return type;
}

std::string rejected_message(std::string_view reason)
{
    return json::serialize(json::object{{"type", "rejected"}, {"reason", reason}});
}

std::string open_error_message(const failure& f)
{
    return json::serialize(json::object{{"type", "error"}, {"errorCode", f.code}, {"message", f.message}});
}

std::optional<open_answer> parse_open_answer(std::string_view text)
{
    std::string error, type;
    auto o = parse_object(text, error);
    if (!o || !get_string(*o, "type", type, error))
        return std::nullopt;
    open_answer a;
    if (type == "joined") {
        a.joined = true;
    } else if (type == "rejected") {
        a.rejected = true;
        get_string(*o, "reason", a.reason, error, false);
        a.reason = truncate_utf8(a.reason, 1024);
    } else if (type == "error") {
        auto code = o->find("errorCode");
        if (code == o->end() || !code->value().is_int64() || code->value().as_int64() < 100000 ||
            code->value().as_int64() > 999999)
            return std::nullopt;
        a.error.code = static_cast<int>(code->value().as_int64());
        get_string(*o, "message", a.error.message, error, false);
    } else {
        return std::nullopt;
    }
    return a;
}

bool is_joined_message(std::string_view text)
{
    auto answer = parse_open_answer(text);
    return answer && answer->joined;
}

std::string error_body(int code, std::string_view message)
{
    return json::serialize(json::object{{"errorCode", code}, {"message", message}});
}

failure parse_error_body(std::string_view body, int http_status)
{
    std::string error;
    if (auto o = parse_object(body, error)) {
        auto code = o->find("errorCode");
        std::string message;
        get_string(*o, "message", message, error, false);
        // A code outside the six-digit range is no code: fall back to the HTTP status.
        if (code != o->end() && code->value().is_int64() && code->value().as_int64() >= 100000 &&
            code->value().as_int64() <= 999999)
            return failure{static_cast<int>(code->value().as_int64()), message};
    }
    std::string text = truncate_utf8(body, 200);
    return failure{http_status * 1000, "HTTP " + std::to_string(http_status) + (text.empty() ? "" : ": " + text)};
}

std::string close_reason_text(int code, std::string_view message)
{
    return truncate_utf8(failure{code, std::string(message)}.describe(), 123);
}

failure parse_close_reason(std::string_view reason)
{
    if (reason.size() >= 7 && reason[6] == ' ') {
        int code = 0;
        for (std::size_t i = 0; i < 6; ++i) {
            if (reason[i] < '0' || reason[i] > '9')
                return failure{0, std::string(reason)};
            code = code * 10 + (reason[i] - '0');
        }
        auto colon = reason.find(": ");
        return failure{code, std::string(colon == std::string_view::npos ? reason.substr(7) : reason.substr(colon + 2))};
    }
    return failure{0, std::string(reason)};
}

} // namespace sg::protocol
