#include "common/device_id.hpp"

#include <string_view>

namespace sg {

namespace {

// ';' is deliberately not accepted: it separates the parts of a connection string, so a device
// id containing it could not be written in one. '/' and space would break the URL paths.
bool allowed_char(char c) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) return true;
    return std::string_view("-.+%_#*?!(),:=@$").find(c) != std::string_view::npos;
}

bool valid_name(std::string_view s, std::size_t max_len) {
    if (s.empty() || s.size() > max_len) return false;
    if (s == "." || s == "..") return false;
    for (char c : s)
        if (!allowed_char(c)) return false;
    return true;
}

} // namespace

bool is_valid_device_id(std::string_view id) { return valid_name(id, 128); }

bool is_valid_stream_name(std::string_view name) { return valid_name(name, 64); }

} // namespace sg
