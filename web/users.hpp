#pragma once
// The gateway's users: a TOML file of password hashes (yescrypt through libxcrypt), device globs
// and an admin flag. Plain C++ (no Asio).
//
//   [users.alice]
//   password = "$y$j9T$..."          # crypt(3) yescrypt hash, never the password
//   devices = ["lab-*", "edge-7"]    # fnmatch(3) globs of device ids this user may reach
//   admin = false                    # may list and replay every recording
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sg::web {

struct user {
    std::string name;
    std::string password_hash;
    std::vector<std::string> devices;
    bool admin = false;
    // True when one of the globs matches the device id.
    bool may_reach(std::string_view device_id) const;
};

class user_store {
public:
    // Throws config_error naming the file and what is wrong. A missing file is an empty store.
    static user_store load(const std::filesystem::path& file);
    // Writes the file (0600) through a temporary file and a rename.
    void save(const std::filesystem::path& file) const;

    const user* find(std::string_view name) const;
    void put(user u);
    std::size_t size() const { return users_.size(); }

private:
    std::map<std::string, user, std::less<>> users_;
};

// A fresh yescrypt hash of password ("$y$..."). Throws std::runtime_error when libxcrypt fails.
std::string hash_password(std::string_view password);
// Recomputes the hash with the stored salt and compares in constant time.
bool verify_password(std::string_view password, const std::string& hash);
// A valid user name: 1-64 of [A-Za-z0-9._-].
bool is_valid_user_name(std::string_view name);

} // namespace sg::web
