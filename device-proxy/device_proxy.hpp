#pragma once
// The device proxy: keeps the device's control connection to the relay and, for each stream
// request it accepts, connects to a local target and carries the stream's bytes to it.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>
#include "common/connection_string.hpp"

namespace sg::device_proxy {

struct target {
    std::string host;
    std::uint16_t port = 0;
};

struct options {
    connection_string device;
    target default_target;                    // used when services is empty
    std::map<std::string, target> services;   // stream name -> target; others are rejected
    std::vector<target> relays;               // --relay: relays to dial in turn (default: the HostName)
    std::optional<std::filesystem::path> ca_file;
    std::optional<std::filesystem::path> cert, key; // X.509 authentication (x509=true)
    std::chrono::seconds stats_interval{10};  // 0 = off
    std::chrono::seconds connect_timeout{10}; // to the local target
    std::chrono::seconds drain_timeout{10};   // SIGTERM: time live streams get to finish
    std::chrono::seconds max_backoff{60};     // longest wait between reconnection attempts
    std::chrono::seconds backoff_reset{60};   // a connection up this long starts the backoff again at 1 s
    std::string metrics_listen;               // ADDR:PORT for /metrics and /healthz; empty or "off" = none
    bool exit_on_auth_failure = false;
    unsigned threads = 1;                     // 0 = one per core (see --threads)
    bool verbose = false;
};

// "NAME=HOST:PORT" (HOST may be [v6]). Throws config_error.
std::pair<std::string, target> parse_service_mapping(const std::string& text);

// "HOST:PORT" (HOST may be [v6]) of --relay. Throws config_error.
target parse_relay_address(const std::string& text);

// Runs until SIGTERM/SIGINT (or a 401 with exit_on_auth_failure); returns the exit code.
int run(const options& o);

} // namespace sg::device_proxy
