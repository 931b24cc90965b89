// libFuzzer target: the control-message parsers (common/protocol.hpp). The same input goes to
// parse_stream_request (what a device reads), parse_stream_response (what the relay reads),
// parse_error_body (what clients read from an HTTP error), parse_close_reason, and the messages
// of a kept stream connection: parse_join, parse_open (what the relay reads there) and
// parse_open_answer (what a service proxy reads).
// Invariants checked:
//  - a message that parses serializes and parses back to the same message;
//  - the relay's answer to a bad response (relay/control.cpp: close with "invalid control
//    message: " + error) is a valid WebSocket close reason: at most 123 bytes of UTF-8;
//  - parse_error_body never yields an empty failure (callers take an empty one for success);
//  - error_body and close_reason_text round-trip through their parsers.
#include "common/error.hpp"
#include "common/protocol.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

namespace protocol = sg::protocol;

void check_stream_request(std::string_view text)
{
    std::string error;
    auto m = protocol::parse_stream_request(text, error);
    SG_FUZZ_CHECK(m.has_value() == error.empty());
    if (!m)
        return;
    std::string error2;
    auto again = protocol::parse_stream_request(protocol::serialize(*m), error2);
    SG_FUZZ_CHECK(again.has_value());
    SG_FUZZ_CHECK(again->request_id == m->request_id && again->stream_name == m->stream_name &&
                  again->stream_id == m->stream_id && again->url == m->url &&
                  again->authorization_token == m->authorization_token);
}

void check_stream_response(std::string_view text)
{
    std::string error;
    auto m = protocol::parse_stream_response(text, error);
    SG_FUZZ_CHECK(m.has_value() == error.empty());
    if (!m) {
        // What relay/control.cpp does with it.
        const std::string reason = protocol::close_reason_text(sg::codes::bad_request, "invalid control message: " + error);
        SG_FUZZ_CHECK(reason.size() <= 123);
        SG_FUZZ_CHECK(sg_fuzz::valid_utf8(reason));
        return;
    }
    SG_FUZZ_CHECK(m->reason.size() <= 1024);
    std::string error2;
    auto again = protocol::parse_stream_response(protocol::serialize(*m), error2);
    SG_FUZZ_CHECK(again.has_value());
    SG_FUZZ_CHECK(again->request_id == m->request_id && again->accepted == m->accepted);
    if (!m->accepted)
        SG_FUZZ_CHECK(again->reason == m->reason);
}

void check_kept_connection_messages(std::string_view text)
{
    std::string error;
    const std::string type = protocol::message_type(text);
    if (auto join = protocol::parse_join(text, error)) {
        SG_FUZZ_CHECK(type == "join" && error.empty());
        std::string error2;
        auto again = protocol::parse_join(protocol::serialize(*join), error2);
        SG_FUZZ_CHECK(again && again->path == join->path && again->authorization == join->authorization &&
                      again->accept_request_id == join->accept_request_id);
    } else {
        // What relay/bridge.cpp closes the connection with.
        const std::string reason = protocol::close_reason_text(sg::codes::bad_request, error);
        SG_FUZZ_CHECK(reason.size() <= 123 && sg_fuzz::valid_utf8(reason));
    }
    error.clear();
    if (auto open = protocol::parse_open(text, error)) {
        SG_FUZZ_CHECK(type == "open" && error.empty());
        SG_FUZZ_CHECK(open->connect_timeout >= 1 && open->connect_timeout <= 300);
        SG_FUZZ_CHECK(open->response_timeout >= 1 && open->response_timeout <= 300);
        std::string error2;
        auto again = protocol::parse_open(protocol::serialize(*open), error2);
        SG_FUZZ_CHECK(again && again->device_id == open->device_id && again->stream_name == open->stream_name &&
                      again->authorization == open->authorization &&
                      again->connect_timeout == open->connect_timeout &&
                      again->response_timeout == open->response_timeout);
    }
    if (auto answer = protocol::parse_open_answer(text)) {
        // Exactly one of the three; an error is a real one (a caller takes an empty failure for success).
        SG_FUZZ_CHECK(int(answer->joined) + int(answer->rejected) + int(static_cast<bool>(answer->error)) == 1);
        SG_FUZZ_CHECK(answer->reason.size() <= 1024);
        if (answer->error) {
            auto back = protocol::parse_open_answer(protocol::open_error_message(answer->error));
            SG_FUZZ_CHECK(back && back->error.code == answer->error.code && back->error.message == answer->error.message);
        }
    }
}

void check_error_body(std::string_view text)
{
    const int status = 400 + static_cast<int>(text.size() % 200); // 400..599, as the callers see them
    sg::failure f = protocol::parse_error_body(text, status);
    SG_FUZZ_CHECK(static_cast<bool>(f));

    if (text.size() <= 512 && sg_fuzz::valid_utf8(text)) {
        sg::failure g = protocol::parse_error_body(protocol::error_body(sg::codes::device_not_online, text), 404);
        SG_FUZZ_CHECK(g.code == sg::codes::device_not_online);
        SG_FUZZ_CHECK(g.message == text);
    }
}

void check_close_reason(std::string_view text)
{
    sg::failure f = protocol::parse_close_reason(text); // must simply not crash
    (void)f;

    static const int codes[] = {sg::codes::bad_request,        sg::codes::invalid_device_id,
                                sg::codes::connection_replaced, sg::codes::unauthorized,
                                sg::codes::device_not_online,   sg::codes::device_connection_closed,
                                sg::codes::internal,            sg::codes::relay_shutting_down,
                                sg::codes::gateway_timeout,     123456};
    if (text.empty())
        return;
    const int code = codes[static_cast<unsigned char>(text[0]) % (sizeof codes / sizeof codes[0])];
    const std::string_view message = text.substr(1);
    const std::string reason = protocol::close_reason_text(code, message);
    SG_FUZZ_CHECK(reason.size() <= 123);
    if (sg_fuzz::valid_utf8(message))
        SG_FUZZ_CHECK(sg_fuzz::valid_utf8(reason));
    sg::failure back = protocol::parse_close_reason(reason);
    SG_FUZZ_CHECK(back.code == code);
    // The message comes back whole when it fit, cut (a prefix) when it did not.
    if (sg_fuzz::valid_utf8(message))
        SG_FUZZ_CHECK(message.substr(0, back.message.size()) == back.message);
    if (sg::failure{code, std::string(message)}.describe().size() <= 123)
        SG_FUZZ_CHECK(back.message == message);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string_view text = sg_fuzz::as_text(data, size);
    check_stream_request(text);
    check_stream_response(text);
    check_kept_connection_messages(text);
    check_error_body(text);
    check_close_reason(text);
    return 0;
}
