#pragma once
// streamgate-web: a web terminal gateway. Users log in from a browser, pick a device they may
// reach, and get an SSH terminal to it; the gateway runs the SSH client (libssh2) over a stream
// it opens through the relay, exactly as the service proxy does.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include "common/connection_string.hpp"

namespace sg::web {

struct options {
    std::string listen = "127.0.0.1:8080";
    std::filesystem::path users_file = "users.toml";
    std::filesystem::path recordings_dir = "recordings"; // <id>.cast files and audit.jsonl
    std::filesystem::path data_dir = "web-data";         // known_hosts (pinned SSH host keys)
    connection_string service;                           // ServiceConnect: opens the streams
    connection_string registry;                          // RegistryRead: lists the devices
    std::optional<std::filesystem::path> ca_file;
    std::optional<std::filesystem::path> tls_cert, tls_key;
    bool allow_plain_http = false; // plain HTTP on a non-loopback address
    std::string stream_name = "ssh";
    std::chrono::seconds idle_timeout{15 * 60};
    std::chrono::seconds connect_timeout{30};
    int login_failures_per_minute = 5;
    std::size_t max_terminals = 200;
    std::filesystem::path xterm_lib = "/usr/share/nodejs/xterm/lib";   // Debian node-xterm
    std::filesystem::path xterm_css = "/usr/share/javascript/xterm/xterm.css"; // Debian libjs-xterm
    std::filesystem::path xterm_fit = "/usr/share/javascript/xterm/addons/fit/fit.js";
    bool verbose = false;
};

// Runs until SIGTERM/SIGINT; returns the exit code. Throws config_error for bad settings.
int run(const options& o);

} // namespace sg::web
