#include "web/users.hpp"

#include <crypt.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <toml++/toml.h>
#include "common/connection_string.hpp"
#include "common/crypto.hpp"

namespace sg::web {

bool user::may_reach(std::string_view device_id) const
{
    std::string id(device_id);
    for (const auto& glob : devices)
        if (::fnmatch(glob.c_str(), id.c_str(), 0) == 0)
            return true;
    return false;
}

bool is_valid_user_name(std::string_view name)
{
    if (name.empty() || name.size() > 64)
        return false;
    for (char c : name)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
            return false;
    return true;
}

user_store user_store::load(const std::filesystem::path& file)
{
    user_store store;
    if (!std::filesystem::exists(file))
        return store;
    toml::table doc;
    try {
        doc = toml::parse_file(file.string());
    } catch (const toml::parse_error& e) {
        std::ostringstream msg;
        msg << file.string() << ":" << e.source().begin.line << ": " << e.description();
        throw config_error(msg.str());
    }
    auto* users = doc["users"].as_table();
    if (!users)
        return store;
    for (auto& [key, node] : *users) {
        std::string name(key.str());
        auto* t = node.as_table();
        if (!t || !is_valid_user_name(name))
            throw config_error(file.string() + ": [users." + name + "] is not a valid user entry");
        user u;
        u.name = name;
        u.password_hash = (*t)["password"].value_or(std::string{});
        if (u.password_hash.rfind("$", 0) != 0)
            throw config_error(file.string() + ": user " + name + " has no password hash (use add-user)");
        if (auto* globs = (*t)["devices"].as_array())
            for (auto& g : *globs)
                if (auto s = g.value<std::string>())
                    u.devices.push_back(*s);
        u.admin = (*t)["admin"].value_or(false);
        store.users_[name] = std::move(u);
    }
    return store;
}

void user_store::save(const std::filesystem::path& file) const
{
    toml::table users;
    for (const auto& [name, u] : users_) {
        toml::array globs;
        for (const auto& g : u.devices)
            globs.push_back(g);
        users.insert(name, toml::table{{"password", u.password_hash}, {"devices", globs}, {"admin", u.admin}});
    }
    toml::table doc{{"users", users}};
    auto tmp = file;
    tmp += ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        if (!out)
            throw std::runtime_error("cannot write " + tmp.string());
        ::chmod(tmp.c_str(), 0600);
        out << "# streamgate-web users: written by `streamgate-web add-user`\n" << doc << "\n";
        if (!out.flush())
            throw std::runtime_error("cannot write " + tmp.string());
    }
    std::filesystem::rename(tmp, file);
}

const user* user_store::find(std::string_view name) const
{
    auto it = users_.find(name);
    return it == users_.end() ? nullptr : &it->second;
}

void user_store::put(user u)
{
    std::string name = u.name;
    users_[name] = std::move(u);
}

std::string hash_password(std::string_view password)
{
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    if (!crypt_gensalt_rn("$y$", 0, nullptr, 0, salt, sizeof salt))
        throw std::runtime_error(std::string("crypt_gensalt_rn: ") + std::strerror(errno));
    crypt_data data{};
    std::string pw(password);
    const char* h = crypt_r(pw.c_str(), salt, &data);
    if (!h || h[0] == '*')
        throw std::runtime_error("crypt_r failed");
    std::string out(h);
    std::memset(pw.data(), 0, pw.size());
    return out;
}

bool verify_password(std::string_view password, const std::string& hash)
{
    crypt_data data{};
    std::string pw(password);
    const char* h = crypt_r(pw.c_str(), hash.c_str(), &data);
    std::memset(pw.data(), 0, pw.size());
    if (!h || h[0] == '*')
        return false;
    return constant_time_equal(h, hash);
}

} // namespace sg::web
