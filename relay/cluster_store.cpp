#include "relay/cluster_store.hpp"

#include <charconv>
#include "common/crypto.hpp"
#include "relay/pg_connection.hpp"
#include "relay/registry.hpp"

namespace sg::relay {

namespace {

std::string interval(std::chrono::milliseconds d) { return std::to_string(d.count()) + " milliseconds"; }

// The claim's announcement rides on the statement that took the row (sent at commit).
constexpr const char* announce =
    "SELECT claim, pg_notify('streamgate_presence', device_id || chr(9) || node_id || chr(9) || epoch || chr(9) || "
    "claim) FROM taken";

// A row whose node is live in that epoch.
constexpr const char* live_holder =
    "EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = presence.node_id AND n.epoch = presence.epoch "
    "AND n.lease_until > now())";

std::optional<std::int64_t> first_claim(const pg::result& r)
{
    if (r.rows() == 0)
        return std::nullopt;
    return r.integer(0, 0);
}

} // namespace

bool valid_node_id(std::string_view id)
{
    if (id.empty() || id.size() > 64)
        return false;
    for (char c : id)
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    return true;
}

cluster_store::cluster_store(const std::string& url)
    : url_(url), db_(std::make_unique<pg::connection>(url)), lookup_(std::make_unique<pg::connection>(url))
{
}

cluster_store::~cluster_store() = default;

std::string cluster_store::shared_secret()
{
    db_->exec("INSERT INTO cluster_secret (id, secret) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
              {random_key_base64(32)}, "create cluster secret");
    auto r = db_->exec("SELECT secret FROM cluster_secret WHERE id = 1", "read cluster secret");
    if (r.rows() != 1)
        throw std::runtime_error("registry " + db_->redacted_url() + ": no cluster secret");
    return r.text(0, 0);
}

bool cluster_store::join(const cluster_node_record& self, std::chrono::milliseconds lease)
{
    auto r = db_->exec(
        "INSERT INTO cluster_nodes (node_id, epoch, public_url, cluster_address, certificate_sha256, started, "
        "lease_until) VALUES ($1, $2, $3, $4, $5, now(), now() + $6::interval) ON CONFLICT (node_id) DO UPDATE SET "
        "epoch = excluded.epoch, public_url = excluded.public_url, cluster_address = excluded.cluster_address, "
        "certificate_sha256 = excluded.certificate_sha256, started = excluded.started, lease_until = "
        "excluded.lease_until WHERE cluster_nodes.lease_until <= now() OR cluster_nodes.epoch = excluded.epoch",
        {self.node_id, self.epoch, self.public_url, self.cluster_address, self.certificate_sha256, interval(lease)},
        "join the cluster");
    if (r.affected() == 0)
        return false;
    db_->exec("DELETE FROM presence WHERE node_id = $1 AND epoch <> $2", {self.node_id, self.epoch},
              "drop an earlier epoch's presence");
    return true;
}

bool cluster_store::renew(const std::string& node_id, const std::string& epoch, std::chrono::milliseconds lease)
{
    auto r = db_->exec("UPDATE cluster_nodes SET lease_until = now() + $3::interval WHERE node_id = $1 AND epoch = $2",
                       {node_id, epoch, interval(lease)}, "renew the lease");
    return r.affected() == 1;
}

void cluster_store::leave(const std::string& node_id, const std::string& epoch)
{
    db_->exec("DELETE FROM presence WHERE node_id = $1 AND epoch = $2", {node_id, epoch}, "drop presence");
    db_->exec("DELETE FROM cluster_nodes WHERE node_id = $1 AND epoch = $2", {node_id, epoch}, "leave the cluster");
}

std::optional<std::int64_t> cluster_store::claim(const std::string& device, const std::string& node_id,
                                                 const std::string& epoch)
{
    auto sql = std::string("WITH taken AS (INSERT INTO presence (device_id, node_id, epoch, claim, since) VALUES ($1, "
                           "$2, $3, nextval('presence_claims'), now()) ON CONFLICT (device_id) DO UPDATE SET node_id = "
                           "excluded.node_id, epoch = excluded.epoch, claim = excluded.claim, since = excluded.since "
                           "WHERE presence.claim < excluded.claim RETURNING device_id, node_id, epoch, claim) ") +
               announce;
    return first_claim(db_->exec(sql.c_str(), {device, node_id, epoch}, "claim a device"));
}

std::optional<std::int64_t> cluster_store::reclaim(const std::string& device, const std::string& node_id,
                                                   const std::string& epoch)
{
    auto sql = std::string("WITH taken AS (INSERT INTO presence (device_id, node_id, epoch, claim, since) VALUES ($1, "
                           "$2, $3, nextval('presence_claims'), now()) ON CONFLICT (device_id) DO UPDATE SET node_id = "
                           "excluded.node_id, epoch = excluded.epoch, claim = excluded.claim, since = excluded.since "
                           "WHERE (presence.node_id = excluded.node_id AND presence.epoch = excluded.epoch) OR NOT ") +
               live_holder + " RETURNING device_id, node_id, epoch, claim) " + announce;
    return first_claim(db_->exec(sql.c_str(), {device, node_id, epoch}, "claim a device again"));
}

void cluster_store::release(const std::string& device, const std::string& node_id, const std::string& epoch)
{
    db_->exec("DELETE FROM presence WHERE device_id = $1 AND node_id = $2 AND epoch = $3", {device, node_id, epoch},
              "release a device");
}

void cluster_store::release_all_but(const std::vector<std::string>& held, const std::string& node_id,
                                    const std::string& epoch)
{
    // A text[] literal: device ids hold no quote, backslash or brace-breaking character that
    // needs more than double quotes (device_id.hpp's character rules).
    std::string array = "{";
    for (const auto& id : held)
        array += (array.size() > 1 ? ",\"" : "\"") + id + "\"";
    array += "}";
    db_->exec("DELETE FROM presence WHERE node_id = $1 AND epoch = $2 AND NOT (device_id = ANY($3::text[]))",
              {node_id, epoch, array}, "drop released devices");
}

std::optional<cluster_node_record> cluster_store::find_home(const std::string& device)
{
    return look_up(
        "SELECT n.node_id, n.epoch, n.public_url, n.cluster_address, n.certificate_sha256 FROM presence p JOIN "
        "cluster_nodes n ON n.node_id = p.node_id AND n.epoch = p.epoch WHERE p.device_id = $1 AND n.lease_until > now()",
        device, "find a device's node");
}

std::optional<cluster_node_record> cluster_store::find_node(const std::string& node_id)
{
    return look_up("SELECT node_id, epoch, public_url, cluster_address, certificate_sha256 FROM cluster_nodes "
                   "WHERE node_id = $1 AND lease_until > now()",
                   node_id, "find a node");
}

int cluster_store::sweep_connection_state(const std::string& stale_before, const std::string& now)
{
    auto r = db_->exec("UPDATE devices d SET connected = false, connection_state_updated_time = $2 WHERE d.connected "
                       "AND d.connection_state_updated_time < $1 AND NOT EXISTS (SELECT 1 FROM presence p JOIN "
                       "cluster_nodes n ON n.node_id = p.node_id AND n.epoch = p.epoch WHERE p.device_id = d.device_id "
                       "AND n.lease_until > now())",
                       {stale_before, now}, "mark dead nodes' devices disconnected");
    return static_cast<int>(r.affected());
}

std::vector<std::pair<std::string, std::string>> cluster_store::live_presence(std::size_t max)
{
    std::lock_guard lock(lookup_mutex_);
    const char* sql = "SELECT p.device_id, p.node_id FROM presence p JOIN cluster_nodes n ON n.node_id = p.node_id AND "
                      "n.epoch = p.epoch WHERE n.lease_until > now() ORDER BY p.device_id LIMIT $1";
    auto r = lookup_->exec(sql, {std::to_string(max)}, "list presence");
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i)
        out.emplace_back(r.text(i, 0), r.text(i, 1));
    return out;
}

std::optional<cluster_node_record> cluster_store::look_up(const char* sql, const std::string& key, const char* what)
{
    std::lock_guard lock(lookup_mutex_);
    auto run = [&] { return lookup_->exec(sql, {key}, what); };
    pg::result r;
    try {
        r = run();
    } catch (const registry_unavailable&) {
        r = run(); // a restarted server: one more try on a new connection
    }
    if (r.rows() == 0)
        return std::nullopt;
    return cluster_node_record{r.text(0, 0), r.text(0, 1), r.text(0, 2), r.text(0, 3), r.text(0, 4)};
}

bool cluster_store::poll_claims(std::vector<presence_claim>& out)
{
    std::vector<pg::connection::notification> received;
    if (listening_ && listener_->poll_notifications(received)) {
        for (auto& n : received) {
            // device \t node \t epoch \t claim
            std::vector<std::string> f;
            std::size_t start = 0;
            for (std::size_t tab; (tab = n.payload.find('\t', start)) != std::string::npos; start = tab + 1)
                f.push_back(n.payload.substr(start, tab - start));
            f.push_back(n.payload.substr(start));
            std::int64_t claim = 0;
            if (f.size() != 4 ||
                std::from_chars(f[3].data(), f[3].data() + f[3].size(), claim).ec != std::errc{})
                continue;
            out.push_back({f[0], f[1], f[2], claim});
        }
        return true;
    }
    listening_ = false;
    if (!listener_)
        listener_ = std::make_unique<pg::connection>(url_);
    listener_->ensure_open();
    listener_->exec("LISTEN streamgate_presence", "listen for presence");
    listening_ = true;
    return false;
}

} // namespace sg::relay
