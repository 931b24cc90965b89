#pragma once
// Recorded terminal sessions: one asciinema v2 cast file per session (a JSON header line, then
// [seconds, "o"|"i"|"r", data] event lines), and one audit line per session in audit.jsonl.
// The header names the web user, device and SSH user: never a password or key.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace sg::web {

struct session_info {
    std::string id;          // random, also the cast file's name (<id>.cast)
    std::string web_user;
    std::string device_id;
    std::string ssh_user;
    std::string auth_method; // "password" or "publickey"
    int cols = 80, rows = 24;
};

class cast_writer {
public:
    cast_writer(const std::filesystem::path& dir, const session_info& info);
    void output(std::string_view data) { event("o", data); }
    void input(std::string_view data) { event("i", data); }
    void resize(int cols, int rows) { event("r", std::to_string(cols) + "x" + std::to_string(rows)); }
    const std::filesystem::path& path() const { return path_; }

private:
    void event(const char* kind, std::string_view data);
    std::filesystem::path path_;
    std::ofstream out_;
    std::chrono::steady_clock::time_point start_;
};

struct audit_record {
    session_info info;
    std::int64_t start_unix = 0, end_unix = 0;
    std::uint64_t bytes_in = 0, bytes_out = 0; // browser -> device, device -> browser
    std::string result;                        // "ok" or what ended it
    std::string host_key;                      // fingerprint the device showed
};

class audit_log {
public:
    explicit audit_log(std::filesystem::path file) : file_(std::move(file)) {}
    // Appends one JSON line; returns it (the gateway logs the same line).
    std::string append(const audit_record& r);
    // Every record, oldest first (for the recordings page).
    std::vector<std::string> lines() const;

private:
    std::filesystem::path file_;
    mutable std::mutex mutex_;
};

// A recording id as the gateway makes them (random URL-safe token); guards the replay route.
bool is_valid_recording_id(std::string_view id);

} // namespace sg::web
