// The gateway's routes other than the terminal WebSocket: the pages, login and logout, the device
// list and, for admins, the recordings. Every state-changing request needs the session's CSRF
// token in X-CSRF-Token; POST bodies must be JSON (a cross-site form cannot send that).
#include <fstream>
#include <boost/json.hpp>
#include <sstream>
#include "common/crypto.hpp"
#include "web/internal.hpp"

namespace sg::web {

namespace json = boost::json;

namespace {

reply json_reply(int status, const json::value& v)
{
    return reply{status, "application/json", json::serialize(v), {}};
}

reply error_reply(int status, const std::string& message)
{
    return reply{status, "application/json", json_error(message), {}};
}

std::string cookie(gateway_state& state, const std::string& value, bool clear)
{
    std::string c = "sg_session=" + value + "; Path=/; HttpOnly; SameSite=Strict";
    if (state.tls)
        c += "; Secure";
    if (clear)
        c += "; Max-Age=0";
    return c;
}

// Same-origin check for requests a browser sends with an Origin header.
bool origin_ok(const request& req)
{
    if (req.origin.empty())
        return true;
    auto scheme = req.origin.find("://");
    return scheme != std::string::npos && req.origin.substr(scheme + 3) == req.host;
}

bool csrf_ok(const web_session& s, const std::string& token)
{
    return !token.empty() && constant_time_equal(s.csrf, token);
}

reply login(gateway_state& state, const request& req)
{
    if (req.content_type.rfind("application/json", 0) != 0)
        return error_reply(415, "send the login as application/json");
    json::error_code ec;
    auto v = json::parse(req.body, ec);
    if (ec || !v.is_object())
        return error_reply(400, "the login must be a JSON object");
    auto& o = v.as_object();
    auto field = [&](const char* k) {
        auto* f = o.if_contains(k);
        return f && f->is_string() ? std::string(f->as_string()) : std::string{};
    };
    std::string name = field("user"), password = field("password");
    if (!is_valid_user_name(name))
        name = "(invalid)";
    if (!state.login_allowed(name, req.peer)) {
        state.log->warn("event=LoginThrottled user={} peer={}", name, req.peer);
        reply r = error_reply(429, "too many failed logins: wait a minute and try again");
        r.headers.emplace_back("Retry-After", "60");
        return r;
    }
    auto u = state.find_user(name);
    // An unknown user costs the same hash as a known one (no timing oracle for user names).
    static const std::string dummy = hash_password("streamgate-web dummy password");
    bool ok = verify_password(password, u ? u->password_hash : dummy) && u;
    OPENSSL_cleanse(password.data(), password.size());
    if (!ok) {
        state.login_failed(name, req.peer);
        state.log->warn("event=LoginFailed user={} peer={} reason={}", name, req.peer, u ? "password" : "unknown user");
        return error_reply(401, "wrong user name or password");
    }
    std::string csrf;
    std::string token = state.create_session(u->name, csrf);
    state.log->info("event=Login user={} peer={}", u->name, req.peer);
    reply r = json_reply(200, json::object{{"user", u->name}, {"admin", u->admin}, {"csrf", csrf}});
    r.headers.emplace_back("Set-Cookie", cookie(state, token, false));
    return r;
}

reply recordings(gateway_state& state)
{
    json::array list;
    for (const auto& line : state.audit.lines()) {
        json::error_code ec;
        auto v = json::parse(line, ec);
        if (!ec)
            list.push_back(std::move(v));
    }
    return json_reply(200, list);
}

reply recording_file(gateway_state& state, const std::string& id)
{
    if (!is_valid_recording_id(id))
        return error_reply(400, "not a recording id");
    auto path = state.opts.recordings_dir / (id + ".cast");
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return error_reply(404, "no such recording");
    std::ostringstream s;
    s << in.rdbuf();
    return reply{200, "application/x-asciicast", s.str(), {}};
}

} // namespace

asio::awaitable<reply> handle_request(std::shared_ptr<gateway_state> state, request req)
{
    const std::string& p = req.path;
    if (req.method == "GET" && (p == "/" || p == "/index.html"))
        co_return reply{200, "text/html; charset=utf-8", asset("index.html"), {}};
    if (req.method == "GET" && p == "/replay")
        co_return reply{200, "text/html; charset=utf-8", asset("replay.html"), {}};
    if (req.method == "GET" && p == "/app.js")
        co_return reply{200, "text/javascript; charset=utf-8", asset("app.js"), {}};
    if (req.method == "GET" && p == "/style.css")
        co_return reply{200, "text/css; charset=utf-8", asset("style.css"), {}};
    if (req.method == "GET" && p == "/replay.js")
        co_return reply{200, "text/javascript; charset=utf-8", asset("replay.js"), {}};
    if (req.method == "GET" && p == "/xterm/xterm.js")
        co_return reply{200, "text/javascript; charset=utf-8", state->xterm_bundle, {}};
    if (req.method == "GET" && p == "/xterm/xterm.css")
        co_return reply{200, "text/css; charset=utf-8", state->xterm_css, {}};
    if (p == "/api/login") {
        if (req.method != "POST")
            co_return error_reply(405, "use POST");
        if (!origin_ok(req))
            co_return error_reply(403, "cross-origin request refused");
        co_return login(*state, req);
    }

    if (p == "/api/terminal" && req.method == "GET") {
        // The same admission as the WebSocket's, as plain HTTP: the page asks it why an upgrade
        // was refused (a browser does not show a refused upgrade's status or body).
        auto a = admit_terminal(*state, req);
        co_return a.refused ? *a.refused : json_reply(200, json::object{{"ok", true}});
    }
    auto session = state->find_session(req.cookie_session);
    if (!session)
        co_return error_reply(401, "not logged in (or logged out after being idle)");
    auto u = state->find_user(session->user);
    if (!u) {
        state->end_session(req.cookie_session);
        co_return error_reply(401, "this user no longer exists");
    }
    if (req.method != "GET" && req.method != "HEAD") {
        if (!origin_ok(req))
            co_return error_reply(403, "cross-origin request refused");
        if (!csrf_ok(*session, req.csrf_header)) {
            state->log->warn("event=CsrfRejected user={} {} {}", u->name, req.method, p);
            co_return error_reply(403, "missing or wrong CSRF token (X-CSRF-Token)");
        }
    }
    if (p == "/api/me" && req.method == "GET")
        co_return json_reply(200, json::object{{"user", u->name}, {"admin", u->admin}, {"csrf", session->csrf}});
    if (p == "/api/logout" && req.method == "POST") {
        state->end_session(req.cookie_session);
        state->log->info("event=Logout user={}", u->name);
        reply r = json_reply(200, json::object{{"ok", true}});
        r.headers.emplace_back("Set-Cookie", cookie(*state, "", true));
        co_return r;
    }
    if (p == "/api/devices" && req.method == "GET") {
        auto listed = co_await list_devices(*state);
        auto& f = std::get<0>(listed);
        if (f) {
            state->log->error("cannot list devices: {}", f.describe());
            co_return error_reply(502, "the relay did not list the devices: " + f.describe());
        }
        json::array out;
        for (auto& d : std::get<1>(listed))
            if (u->may_reach(d.id))
                out.push_back(json::object{{"id", d.id}, {"online", d.online}});
        co_return json_reply(200, out);
    }
    if (p == "/api/recordings" && req.method == "GET") {
        if (!u->admin)
            co_return error_reply(403, "recordings are for admin users only");
        co_return recordings(*state);
    }
    if (p.rfind("/api/recordings/", 0) == 0 && req.method == "GET") {
        if (!u->admin)
            co_return error_reply(403, "recordings are for admin users only");
        co_return recording_file(*state, p.substr(16));
    }
    co_return error_reply(404, "no such page");
}

terminal_admission admit_terminal(gateway_state& state, const request& req)
{
    terminal_admission a;
    auto session = state.find_session(req.cookie_session);
    auto u = session ? state.find_user(session->user) : std::nullopt;
    if (!u) {
        a.refused = error_reply(401, "not logged in (or logged out after being idle)");
        return a;
    }
    if (!origin_ok(req)) {
        a.refused = error_reply(403, "cross-origin request refused");
        return a;
    }
    // A browser cannot set headers on a WebSocket upgrade: the token travels in the query.
    auto token = query_value(req.query, "csrf", true);
    if (!token || !csrf_ok(*session, *token)) {
        state.log->warn("event=CsrfRejected user={} terminal", u->name);
        a.refused = error_reply(403, "missing or wrong CSRF token");
        return a;
    }
    auto device = query_value(req.query, "device", true).value_or("");
    if (device.empty() || !u->may_reach(device)) {
        state.log->warn("event=DeviceForbidden user={} device={}", u->name, device);
        a.refused = error_reply(403, "user " + u->name + " may not reach device " + device);
        return a;
    }
    if (state.active_terminals >= state.opts.max_terminals) {
        a.refused = error_reply(503, "too many terminals open on this gateway");
        return a;
    }
    a.user = u->name;
    a.device = device;
    return a;
}

} // namespace sg::web
