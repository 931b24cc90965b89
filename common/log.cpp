#include "common/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

namespace sg {
namespace {

std::atomic<log_format> g_format{log_format::text};

const char* const k_text_pattern = "%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ [%n] %v";

std::string utc_timestamp(std::chrono::system_clock::time_point t)
{
    const auto since_epoch = t.time_since_epoch();
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch);
    const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch - seconds).count();
    const std::time_t tt = static_cast<std::time_t>(seconds.count());
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char text[64];
    std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(millis));
    return text;
}

// Length of the valid UTF-8 sequence starting at s[i], or 0 if there is none.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i)
{
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char lead = byte(i);
    std::size_t length = 0;
    unsigned min_code = 0;
    unsigned code = 0;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2, code = lead & 0x1F, min_code = 0x80;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3, code = lead & 0x0F, min_code = 0x800;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4, code = lead & 0x07, min_code = 0x10000;
    } else {
        return 0;
    }
    if (i + length > s.size())
        return 0;
    for (std::size_t k = 1; k < length; ++k) {
        if ((byte(i + k) & 0xC0) != 0x80)
            return 0;
        code = (code << 6) | (byte(i + k) & 0x3F);
    }
    if (code < min_code || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
        return 0;
    return length;
}

void append_json_string(std::string& out, std::string_view s)
{
    out += '"';
    for (std::size_t i = 0; i < s.size();) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c >= 0x80) {
            const std::size_t length = utf8_sequence_length(s, i);
            if (length == 0) {
                out += "\\ufffd";
                ++i;
            } else {
                out.append(s.substr(i, length));
                i += length;
            }
            continue;
        }
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7F) {
                char escaped[8];
                std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
                out += escaped;
            } else {
                out += static_cast<char>(c);
            }
        }
        ++i;
    }
    out += '"';
}

std::string_view view(spdlog::string_view_t s) { return {s.data(), s.size()}; }

class json_formatter final : public spdlog::formatter {
public:
    void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override
    {
        std::string line = json_log_line(utc_timestamp(msg.time), view(spdlog::level::to_string_view(msg.level)),
                                         view(msg.logger_name), view(msg.payload));
        line += '\n';
        dest.append(line.data(), line.data() + line.size());
    }
    std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<json_formatter>(); }
};

void apply_format(spdlog::logger& logger, log_format format)
{
    if (format == log_format::json)
        logger.set_formatter(std::make_unique<json_formatter>());
    else
        logger.set_formatter(std::make_unique<spdlog::pattern_formatter>(k_text_pattern));
}

} // namespace

std::optional<log_format> parse_log_format(std::string_view name)
{
    if (name == "text")
        return log_format::text;
    if (name == "json")
        return log_format::json;
    return std::nullopt;
}

void set_log_format(log_format format)
{
    g_format = format;
    spdlog::apply_all([format](const std::shared_ptr<spdlog::logger>& logger) { apply_format(*logger, format); });
}

log_format current_log_format() { return g_format; }

std::shared_ptr<spdlog::logger> make_logger(const std::string& component, bool verbose)
{
    if (auto existing = spdlog::get(component))
        return existing;
    auto logger = spdlog::stderr_color_mt(component);
    apply_format(*logger, g_format);
    logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    logger->flush_on(spdlog::level::info);
    return logger;
}

std::string json_log_line(std::string_view time, std::string_view level, std::string_view component,
                          std::string_view message)
{
    std::string line = "{\"time\":";
    append_json_string(line, time);
    line += ",\"level\":";
    append_json_string(line, level);
    line += ",\"component\":";
    append_json_string(line, component);
    line += ",\"message\":";
    append_json_string(line, message);
    line += '}';
    return line;
}

void report_error(std::string_view component, std::string_view message)
{
    if (g_format == log_format::json)
        std::cerr << json_log_line(utc_timestamp(std::chrono::system_clock::now()), "error", component, message)
                  << std::endl;
    else
        std::cerr << "error: " << message << std::endl;
}

} // namespace sg
