#pragma once
// One spdlog logger per component, writing to stderr.
#include <memory>
#include <string>
#include <spdlog/spdlog.h>

namespace sg {
// Creates (or returns) the component's logger, e.g. "relay", "device-proxy".
std::shared_ptr<spdlog::logger> make_logger(const std::string& component, bool verbose = false);
} // namespace sg
