#include "web/host_keys.hpp"

#include <sys/stat.h>
#include <fstream>
#include <sstream>
#include "common/crypto.hpp"

namespace sg::web {

std::string ssh_fingerprint(std::string_view key_blob)
{
    std::string b64 = base64_encode(sha256(key_blob));
    while (!b64.empty() && b64.back() == '=')
        b64.pop_back();
    return "SHA256:" + b64;
}

host_key_store::host_key_store(std::filesystem::path file) : file_(std::move(file))
{
    std::ifstream in(file_);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream fields(line);
        std::string device, type, fingerprint;
        if (line.empty() || line[0] == '#' || !(fields >> device >> type >> fingerprint))
            continue;
        keys_[device] = type + " " + fingerprint;
    }
}

host_key_check host_key_store::check(const std::string& device_id, const std::string& key_type,
                                     const std::string& fingerprint)
{
    std::lock_guard lock(mutex_);
    std::string entry = key_type + " " + fingerprint;
    auto it = keys_.find(device_id);
    if (it != keys_.end())
        return constant_time_equal(it->second, entry) ? host_key_check::matches : host_key_check::changed;
    keys_[device_id] = entry;
    std::ofstream out(file_, std::ios::app);
    ::chmod(file_.c_str(), 0600);
    out << device_id << " " << entry << "\n";
    return host_key_check::pinned_now;
}

std::string host_key_store::pinned(const std::string& device_id)
{
    std::lock_guard lock(mutex_);
    auto it = keys_.find(device_id);
    return it == keys_.end() ? std::string{} : it->second;
}

} // namespace sg::web
