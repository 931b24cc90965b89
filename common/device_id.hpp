#pragma once
#include <string_view>

namespace sg {
// IoT Hub's rule: 1..128 ASCII letters, digits and - . + % _ # * ? ! ( ) , : = @ $ ;
// "." and ".." alone are refused because they are path navigation.
bool is_valid_device_id(std::string_view id);
// Same character rule for stream names (what --service NAME maps), 1..64 characters.
bool is_valid_stream_name(std::string_view name);
} // namespace sg
