#include <boost/json.hpp>
#include "common/crypto.hpp"
#include "common/log.hpp"
#include "common/tls.hpp"
#include "web/internal.hpp"

namespace sg::web {

using clock = std::chrono::steady_clock;
constexpr std::size_t max_sessions_per_user = 16;

gateway_state::gateway_state(const options& o)
    : opts(o), tls(o.tls_cert.has_value()), log(make_logger("web", o.verbose)),
      relay_tls(std::make_shared<boost::asio::ssl::context>(make_client_tls_context(o.ca_file))),
      host_keys(o.data_dir / "known_hosts"), audit(o.recordings_dir / "audit.jsonl")
{
}

std::string gateway_state::create_session(const std::string& user, std::string& csrf_out)
{
    std::string token = random_token(32);
    csrf_out = random_token(24);
    std::lock_guard lock(mutex_);
    auto now = clock::now();
    for (auto it = sessions_.begin(); it != sessions_.end();)
        it = now - it->second.last_seen > opts.idle_timeout ? sessions_.erase(it) : std::next(it);
    // Bounded: a user logging in again and again keeps at most max_sessions_per_user, the least
    // recently used go first.
    for (;;) {
        auto oldest = sessions_.end();
        std::size_t count = 0;
        for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
            if (it->second.user == user) {
                ++count;
                if (oldest == sessions_.end() || it->second.last_seen < oldest->second.last_seen)
                    oldest = it;
            }
        if (count < max_sessions_per_user)
            break;
        sessions_.erase(oldest);
    }
    sessions_[sha256(token)] = web_session{user, csrf_out, now};
    return token;
}

std::optional<web_session> gateway_state::find_session(const std::string& token)
{
    if (token.empty())
        return std::nullopt;
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(sha256(token));
    if (it == sessions_.end())
        return std::nullopt;
    auto now = clock::now();
    if (now - it->second.last_seen > opts.idle_timeout) {
        log->info("event=IdleLogout user={}", it->second.user);
        sessions_.erase(it);
        return std::nullopt;
    }
    it->second.last_seen = now;
    return it->second;
}

bool gateway_state::session_alive(const std::string& token)
{
    std::lock_guard lock(mutex_);
    auto it = sessions_.find(sha256(token));
    return it != sessions_.end() && clock::now() - it->second.last_seen <= opts.idle_timeout;
}

void gateway_state::end_session(const std::string& token)
{
    std::lock_guard lock(mutex_);
    sessions_.erase(sha256(token));
}

bool gateway_state::login_allowed(const std::string& user, const std::string& peer)
{
    std::lock_guard lock(mutex_);
    auto now = clock::now();
    // Per user name, and four times that per client address (several users behind one NAT).
    for (const auto& [key, limit] : {std::pair{"u:" + user, opts.login_failures_per_minute},
                                     std::pair{"a:" + peer, 4 * opts.login_failures_per_minute}}) {
        auto& v = failures_[key];
        std::erase_if(v, [&](auto t) { return now - t > std::chrono::minutes(1); });
        if (static_cast<int>(v.size()) >= limit)
            return false;
    }
    return true;
}

void gateway_state::login_failed(const std::string& user, const std::string& peer)
{
    std::lock_guard lock(mutex_);
    auto now = clock::now();
    if (failures_.size() > 10000) { // bounded: an attacker cycling names cannot grow it forever
        std::erase_if(failures_, [&](const auto& kv) {
            return kv.second.empty() || now - kv.second.back() > std::chrono::minutes(1);
        });
        if (failures_.size() > 10000) // still full of fresh failures: forget names, keep addresses
            std::erase_if(failures_, [](const auto& kv) { return kv.first.rfind("u:", 0) == 0; });
    }
    failures_["u:" + user].push_back(now);
    failures_["a:" + peer].push_back(now);
}

std::optional<user> gateway_state::find_user(const std::string& name)
{
    std::lock_guard lock(mutex_);
    std::error_code ec;
    auto mtime = std::filesystem::last_write_time(opts.users_file, ec);
    if (!ec && mtime != users_mtime_) {
        try {
            users_ = user_store::load(opts.users_file);
            users_mtime_ = mtime;
        } catch (const std::exception& e) {
            log->error("cannot reload {}: {} (keeping the previous users)", opts.users_file.string(), e.what());
        }
    }
    if (const user* u = users_.find(name))
        return *u;
    return std::nullopt;
}

std::string json_error(const std::string& message)
{
    return boost::json::serialize(boost::json::object{{"error", message}});
}

} // namespace sg::web
