#include "common/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

namespace sg {

std::shared_ptr<spdlog::logger> make_logger(const std::string& component, bool verbose)
{
    if (auto existing = spdlog::get(component))
        return existing;
    auto logger = spdlog::stderr_color_mt(component);
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ [%n] %v");
    logger->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
    logger->flush_on(spdlog::level::info);
    return logger;
}

} // namespace sg
