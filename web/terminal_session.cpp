// One browser terminal: a stream through the relay, SSH over it, the host key pinned on first
// use, the output recorded as an asciinema cast and the session audited when it ends.
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json.hpp>
#include "common/client.hpp"
#include "common/crypto.hpp"
#include "common/pump.hpp"
#include "web/internal.hpp"

namespace sg::web {

namespace json = boost::json;

namespace {

std::int64_t unix_now()
{
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

class recording_sink : public terminal_sink {
public:
    recording_sink(browser_channel& browser, cast_writer& cast) : browser_(browser), cast_(cast) {}
    asio::awaitable<bool> output(std::string_view data) override
    {
        cast_.output(data);
        bool ok = co_await browser_.output(data);
        co_return ok;
    }

private:
    browser_channel& browser_;
    cast_writer& cast_;
};

struct pump_done {
    explicit pump_done(asio::any_io_executor ex) : timer(ex, std::chrono::steady_clock::time_point::max()) {}
    asio::steady_timer timer;
    bool done = false;
};

asio::awaitable<void> run_pump(std::shared_ptr<tcp::socket> local, std::shared_ptr<wss_stream> ws,
                               std::shared_ptr<pump_done> done)
{
    co_await pump(tcp_end(std::move(local)), ws_end(std::move(ws)));
    done->done = true;
    done->timer.cancel();
}

std::string describe_stream_failure(const failure& f, const std::string& device)
{
    if (f.code == codes::device_not_online)
        return "device " + device + " is offline (404103 DeviceNotOnline)";
    if (f.code == codes::device_not_found)
        return "device " + device + " is not registered (404001 DeviceNotFound)";
    return "cannot open a stream to " + device + ": " + f.describe();
}

// Audits the session (log line and audit file) and tells the browser how it ended. Awaited at
// once by its caller, so the references outlive it.
asio::awaitable<void> finish(gateway_state& state, ssh_terminal& terminal, terminal_request& req, audit_record& rec,
                             browser_channel& browser, std::string result)
{
    req.credentials.wipe();
    rec.end_unix = unix_now();
    rec.bytes_in = terminal.bytes_in();
    rec.bytes_out = terminal.bytes_out();
    rec.result = result.empty() ? "ok" : result;
    state.log->info("event=TerminalSession {}", state.audit.append(rec));
    // Built outside the co_await: g++ 12 cannot keep braced initialisers with literals across one.
    std::string closed = json::serialize(json::object{{"phase", "closed"}, {"ok", result.empty()}, {"message", rec.result}});
    co_await browser.status(std::move(closed));
    state.active_terminals--;
}

} // namespace

std::optional<terminal_request> parse_terminal_start(const std::string& text, std::string& error)
{
    json::error_code ec;
    auto v = json::parse(text, ec);
    if (ec || !v.is_object()) {
        error = "the first message must be a JSON object";
        return std::nullopt;
    }
    auto& o = v.as_object();
    auto str = [&](const char* k) -> std::string {
        auto* f = o.if_contains(k);
        return f && f->is_string() ? std::string(f->as_string()) : std::string{};
    };
    auto num = [&](const char* k, int dflt) -> int {
        auto* f = o.if_contains(k);
        return f && f->is_int64() ? static_cast<int>(std::clamp<std::int64_t>(f->as_int64(), 2, 1000)) : dflt;
    };
    terminal_request r;
    r.credentials.user = str("user");
    r.credentials.password = str("password");
    r.credentials.private_key = str("key");
    r.credentials.passphrase = str("passphrase");
    r.cols = num("cols", 80);
    r.rows = num("rows", 24);
    if (r.credentials.user.empty() || r.credentials.user.size() > 256) {
        error = "an SSH user name is required";
        return std::nullopt;
    }
    if (r.credentials.password.empty() && r.credentials.private_key.empty()) {
        error = "an SSH password or private key is required";
        return std::nullopt;
    }
    for (auto& [k, f] : o)
        if (f.is_string())
            OPENSSL_cleanse(const_cast<char*>(f.as_string().data()), f.as_string().size());
    return r;
}

asio::awaitable<void> run_terminal(std::shared_ptr<gateway_state> state, std::shared_ptr<ssh_terminal> terminal,
                                   terminal_request req, browser_channel& browser)
{
    audit_record rec;
    rec.info.id = random_token(16);
    rec.info.web_user = req.web_user;
    rec.info.device_id = req.device_id;
    rec.info.ssh_user = req.credentials.user;
    rec.info.auth_method = req.credentials.private_key.empty() ? "password" : "publickey";
    rec.info.cols = req.cols;
    rec.info.rows = req.rows;
    rec.start_unix = unix_now();
    const std::string& device = req.device_id;
    auto tag = "session=" + rec.info.id + " user=" + req.web_user + " device=" + device;
    state->log->info("event=TerminalStart {} ssh_user={} auth={}", tag, rec.info.ssh_user, rec.info.auth_method);
    state->active_terminals++;

    std::shared_ptr<pump_done> pumped;
    std::string connecting = R"({"phase":"connecting"})";
    co_await browser.status(std::move(connecting));
    client::stream_request sreq{device, state->opts.stream_name, state->opts.connect_timeout,
                                state->opts.connect_timeout};
    auto created = co_await client::create_stream(*state->relay_tls, state->opts.service, sreq);
    auto& cf = std::get<0>(created);
    auto& response = std::get<1>(created);
    if (cf) {
        co_await finish(*state, *terminal, req, rec, browser, describe_stream_failure(cf, device));
        co_return;
    }
    if (!response.accepted) {
        co_await finish(*state, *terminal, req, rec, browser, "device " + device + " rejected the stream: " + response.reason);
        co_return;
    }
    auto joined = co_await client::connect_stream(*state->relay_tls, response);
    auto& jf = std::get<0>(joined);
    auto& ws = std::get<1>(joined);
    if (jf) {
        co_await finish(*state, *terminal, req, rec, browser, "cannot join the stream to " + device + ": " + jf.describe());
        co_return;
    }
    pumped = std::make_shared<pump_done>(ws->get_executor());
    asio::co_spawn(ws->get_executor(), run_pump(terminal->transport(), ws, pumped), asio::detached);

    std::string result = co_await terminal->handshake(state->opts.connect_timeout);
    if (result.empty()) {
        std::string fp = ssh_fingerprint(terminal->host_key_blob());
        std::string type = terminal->host_key_type();
        rec.host_key = type + " " + fp;
        auto check = state->host_keys.check(device, type, fp);
        if (check == host_key_check::changed) {
            result = "HOST KEY CHANGED for device " + device + ": pinned " + state->host_keys.pinned(device) +
                     ", the device now shows " + type + " " + fp +
                     ". Refusing to connect. If the change is expected, an administrator removes the device's line "
                     "from " + (state->opts.data_dir / "known_hosts").string();
            state->log->warn("event=HostKeyChanged {} shown={} {}", tag, type, fp);
        } else {
            std::string shown = json::serialize(json::object{
                {"phase", "hostkey"}, {"fingerprint", type + " " + fp}, {"firstUse", check == host_key_check::pinned_now}});
            co_await browser.status(std::move(shown));
        }
    }
    if (result.empty())
        result = co_await terminal->authenticate(req.credentials, state->opts.connect_timeout);
    if (result.empty())
        result = co_await terminal->open_shell(req.cols, req.rows, state->opts.connect_timeout);
    if (result.empty()) {
        std::string connected = json::serialize(json::object{{"phase", "connected"}, {"session", rec.info.id}});
        co_await browser.status(std::move(connected));
        cast_writer cast(state->opts.recordings_dir, rec.info);
        recording_sink sink(browser, cast);
        result = co_await terminal->run(sink);
    }
    terminal->shutdown_transport();
    // The pump forwards what is left and the end of stream; it gets a moment, then is cut.
    if (!pumped->done) {
        pumped->timer.expires_after(std::chrono::seconds(2));
        co_await pumped->timer.async_wait(use_nothrow);
    }
    if (!pumped->done)
        ws_end(ws).abort(false);
    co_await finish(*state, *terminal, req, rec, browser, result);
}

} // namespace sg::web
