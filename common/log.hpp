#pragma once
// One spdlog logger per component, writing to stderr, as plain text for a terminal or as JSON
// lines ({"time","level","component","message"}) for a log collector.
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <spdlog/spdlog.h>

namespace sg {

enum class log_format { text, json };

// "text" or "json"; nullopt for anything else.
std::optional<log_format> parse_log_format(std::string_view name);
// Applies to every logger made so far and every one made later.
void set_log_format(log_format format);
log_format current_log_format();

// Creates (or returns) the component's logger, e.g. "relay", "device-proxy".
std::shared_ptr<spdlog::logger> make_logger(const std::string& component, bool verbose = false);

// One JSON log line without the newline; `time` is ISO 8601. Invalid UTF-8 becomes U+FFFD, so
// the line is always valid JSON.
std::string json_log_line(std::string_view time, std::string_view level, std::string_view component,
                          std::string_view message);

// A fatal error of a binary on stderr: "error: <message>" as text, or a JSON line at level
// "error" when the log format is json.
void report_error(std::string_view component, std::string_view message);

} // namespace sg
