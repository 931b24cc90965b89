#pragma once
// Trust on first use for the devices' SSH host keys: the first key seen for a device is pinned in
// <data-dir>/known_hosts ("device-id key-type SHA256:base64"), later connections must show it.
#include <filesystem>
#include <map>
#include <mutex>
#include <string>

namespace sg::web {

enum class host_key_check { pinned_now, matches, changed };

class host_key_store {
public:
    explicit host_key_store(std::filesystem::path file);
    // Compares (or pins) the key of device; thread-safe. `fingerprint` is "SHA256:..." as
    // OpenSSH shows it.
    host_key_check check(const std::string& device_id, const std::string& key_type, const std::string& fingerprint);
    // The pinned fingerprint, or "".
    std::string pinned(const std::string& device_id);

private:
    std::filesystem::path file_;
    std::mutex mutex_;
    std::map<std::string, std::string> keys_; // device -> "type fingerprint"
};

// "SHA256:<unpadded base64 of the SHA-256 of the key blob>", as `ssh-keygen -l` prints it.
std::string ssh_fingerprint(std::string_view key_blob);

} // namespace sg::web
