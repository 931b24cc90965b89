#pragma once
// The service proxy: listens on a local port (or uses stdin/stdout) and opens one stream to
// the device per local connection.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include "common/connection_string.hpp"

namespace sg::service_proxy {

struct options {
    connection_string service;
    std::string device_id;
    std::uint16_t local_port = 0;
    std::string bind = "127.0.0.1";
    std::string stream_name = "TestStream";
    bool stdio = false; // one stream over stdin/stdout (SSH ProxyCommand)
    std::optional<std::filesystem::path> ca_file;
    std::chrono::seconds connect_timeout{60};
    std::chrono::seconds response_timeout{60};
    std::chrono::seconds drain_timeout{10}; // SIGTERM: time live streams get to finish
    unsigned threads = 1; // 0 = one per core (see --threads)
    bool verbose = false;
};

// Runs until SIGTERM/SIGINT (listening) or until the one stream ends (stdio); returns the exit code.
int run(const options& o);

} // namespace sg::service_proxy
