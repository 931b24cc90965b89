#pragma once
// The relay: registry, device control connections, stream creation and the streaming endpoint,
// all on one TLS port.
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include "common/tls.hpp"

namespace sg::relay {

struct relay_options {
    std::filesystem::path data_dir = "./sg";
    std::string listen = "0.0.0.0:8443";
    std::string host_name;                        // public name; default from --listen
    std::optional<std::filesystem::path> cert, key; // default: the embedded CA's certificate
    unsigned threads = 0;                         // 0 = one per core
    tls_version min_tls = tls_version::v1_2;
    std::chrono::seconds handshake_timeout{10};   // TCP accept to a complete HTTP request
    std::chrono::seconds drain_timeout{10};       // SIGTERM: time live streams get to finish
    std::chrono::seconds clock_skew{300};
    bool verbose = false;
};

// Runs until SIGTERM/SIGINT; returns the process exit code.
int run_relay(const relay_options& options);

} // namespace sg::relay
