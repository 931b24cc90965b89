// The web terminal end to end: a real relay, device proxies in front of a real sshd, the
// streamgate-web gateway, and headless Chromium typing into xterm.js (web_check.py drives it over
// the DevTools protocol and prints one OK line per check). Nothing is mocked.
#include <catch2/catch.hpp>

#include <openssl/sha.h>

#include <filesystem>
#include <iostream>
#include <sstream>

#include "admin_http_client.hpp"
#include "harness.hpp"

using namespace sgit;
namespace fs = std::filesystem;

namespace {

std::optional<std::string> find_chromium() {
    for (const char* candidate : {"/usr/bin/chromium", "/usr/bin/chromium-browser"})
        if (fs::exists(candidate)) return std::string(candidate);
    return std::nullopt;
}

// "SHA256:..." as ssh-keygen -l prints it.
std::string openssh_fingerprint(const bytes& blob) {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256(blob.data(), blob.size(), digest);
    std::string b64 = base64_encode(std::span<const unsigned char>(digest, sizeof digest));
    while (!b64.empty() && b64.back() == '=') b64.pop_back();
    return "SHA256:" + b64;
}

void add_user(const fs::path& users, const std::string& name, const std::string& password,
              const std::string& globs, bool admin) {
    std::vector<std::string> argv = {"sh", "-c", "printf '%s\\n' \"$SG_PW\" | \"$0\" add-user --users \"$1\" --name \"$2\" --devices \"$3\" $4",
                                     SG_WEB_BIN, users.string(), name, globs, admin ? "--admin" : ""};
    run_result r = run(argv, {{"SG_PW", password}});
    INFO(describe(argv, r));
    REQUIRE(r.exit_code == 0);
    CHECK(contains(r.out, "added user " + name));
}

}  // namespace

TEST_CASE("web terminal: a browser logs in, opens SSH terminals to a device through the relay, refusals are clear",
          "[integration][web]") {
    auto chromium = find_chromium();
    if (!chromium) {
        WARN("SKIPPED: chromium is not installed (scripts/install-deps.sh installs it)");
        return;
    }
    sshd_fixture sshd;
    relay_fixture relay;
    const std::string ssh_target = "ssh=127.0.0.1:" + std::to_string(sshd.port());
    std::vector<std::unique_ptr<process>> devices;
    for (const std::string id : {"lab-1", "lab-2", "other-1"}) {
        const std::string cs = relay.create_device(id);
        devices.push_back(relay.spawn("device-proxy-" + id,
                                      {bin::device_proxy, "--ca-file", relay.ca_file().string(), cs, "--service", ssh_target}));
        REQUIRE(relay.wait_device_connected(id, *devices.back()));
    }
    relay.create_device("lab-off");  // registered, never connected
    {
        // lab-rej's SSH service points at a closed port: its device proxy rejects every stream.
        const std::string cs = relay.create_device("lab-rej");
        devices.push_back(relay.spawn("device-proxy-lab-rej",
                                      {bin::device_proxy, "--ca-file", relay.ca_file().string(), cs, "--service",
                                       "ssh=127.0.0.1:" + std::to_string(free_port())}));
        REQUIRE(relay.wait_device_connected("lab-rej", *devices.back()));
    }

    const fs::path users = relay.dir() / "users.toml";
    const std::string alice_pw = "alice-pw-" + sha256_hex(random_bytes(8)).substr(0, 12);
    const std::string bob_pw = "bob-pw-" + sha256_hex(random_bytes(8)).substr(0, 12);
    add_user(users, "alice", alice_pw, "lab-*", true);
    add_user(users, "bob", bob_pw, "lab-*", false);
    const std::string users_text = read_file(users);
    CHECK(contains(users_text, "$y$"));  // yescrypt
    CHECK_FALSE(contains(users_text, alice_pw));

    // lab-2's pinned key is not the one its sshd shows: the gateway must refuse it.
    const fs::path data_dir = relay.dir() / "web-data";
    fs::create_directories(data_dir);
    const std::string wrong_pin = "lab-2 ssh-ed25519 SHA256:" + std::string(43, 'A') + "\n";
    write_file(data_dir / "known_hosts",
               std::span<const unsigned char>(reinterpret_cast<const unsigned char*>(wrong_pin.data()), wrong_pin.size()));
    const fs::path recordings = relay.dir() / "recordings";
    run_result registry_cs = relay.admin({"show-connection-string", "--policy-name", "registryRead"});
    REQUIRE(registry_cs.exit_code == 0);

    std::unique_ptr<process> web = relay.spawn(
        "web", {SG_WEB_BIN, "--listen", "127.0.0.1:0", "--users", users.string(), "--recordings", recordings.string(),
                "--data-dir", data_dir.string(), "--connection-string", relay.service_connection_string(),
                "--registry-connection-string", trim(registry_cs.out), "--ca-file", relay.ca_file().string()});
    const std::string address = wait_listening_address(*web, "event=WebListening");
    INFO(web->describe());
    REQUIRE_FALSE(address.empty());

    fs::create_directories(SG_TEST_ARTIFACTS_DIR);
    const fs::path profile = relay.dir() / "chromium-profile";
    fs::create_directories(profile);
    const std::string fingerprint = openssh_fingerprint(sshd.host_key_blob());
    std::unique_ptr<process> checker = relay.spawn(
        "web-check", {"python3", SG_WEB_CHECK, "--chromium", *chromium, "--url", "http://" + address,
                      "--user", "alice", "--password", alice_pw, "--user2", "bob", "--password2", bob_pw,
                      "--device", "lab-1", "--offline-device", "lab-off", "--hidden-device", "other-1",
                      "--changed-device", "lab-2", "--rejecting-device", "lab-rej", "--ssh-user", sshd.user(), "--ssh-key-file", sshd.user_key().string(),
                      "--host-fingerprint", fingerprint, "--artifacts", SG_TEST_ARTIFACTS_DIR,
                      "--user-data-dir", profile.string(), "--timeout", "200"});
    bool done = wait_until([&] { return !checker->running(); }, 240s, 100ms);
    const std::string out = checker->stdout_text();
    INFO(checker->describe() + "\n" + out);
    REQUIRE(done);
    CHECK(checker->exit_code() == 0);
    for (const char* name : {"login", "device-list-online", "device-list-offline", "device-list-hides-other",
                             "host-key-shown", "terminal-echo", "terminal-resize", "second-terminal",
                             "wrong-ssh-password", "device-offline", "device-rejected", "host-key-changed", "device-forbidden",
                             "others-unaffected", "terminal-exit", "replay", "logout-ends-terminals", "unknown-web-user", "wrong-web-password",
                             "second-user-login", "missing-csrf", "wrong-csrf", "terminal-without-csrf",
                             "terminal-forbidden-device", "recordings-admin-only", "session-unaffected",
                             "device-list-filtered", "logout", "logged-out", "login-rate-limit"})
        CHECK(contains(out, std::string("OK ") + name + "\n"));
    CHECK(contains(out, "DONE\n"));

    // Trust on first use: lab-1's key is pinned as the sshd shows it; lab-2's wrong pin stays.
    const std::string known = read_file(data_dir / "known_hosts");
    CHECK(contains(known, "lab-1 ssh-ed25519 " + fingerprint + "\n"));
    CHECK(count_of(known, "lab-2 ") == 1);

    // The audit: one line per terminal, with user, device, SSH user, times, bytes and result.
    const std::string audit = read_file(recordings / "audit.jsonl");
    CHECK(contains(audit, R"("web_user":"alice","device":"lab-1","ssh_user":")" + sshd.user() + R"(","auth":"publickey")"));
    CHECK(contains(audit, R"("result":"ok")"));
    CHECK(contains(audit, "SSH authentication failed"));
    CHECK(contains(audit, "404103"));
    CHECK(contains(audit, "device lab-rej rejected the stream"));
    CHECK(contains(audit, "HOST KEY CHANGED"));
    CHECK(contains(web->stderr_text(), "event=TerminalSession"));

    // No password or key anywhere: the gateway's log, the audit, every recording.
    const std::string key_text = read_file(sshd.user_key());
    std::vector<std::string> secrets = {alice_pw, bob_pw, "wrong-password"};
    {
        std::istringstream lines(key_text);
        std::string line;
        while (std::getline(lines, line))
            if (line.size() > 20 && line.find("PRIVATE KEY") == std::string::npos) secrets.push_back(line);
    }
    std::vector<std::pair<std::string, std::string>> places = {{"gateway log", web->stderr_text() + web->stdout_text()},
                                                               {"audit", audit}};
    int casts = 0;
    for (const auto& e : fs::directory_iterator(recordings))
        if (e.path().extension() == ".cast") {
            ++casts;
            places.emplace_back(e.path().filename().string(), read_file(e.path()));
        }
    CHECK(casts >= 2);
    for (const auto& [where, text] : places)
        for (const auto& secret : secrets) {
            INFO(where);
            CHECK_FALSE(contains(text, secret));
        }
    {
        // What the user was shown for each refusal, for the test log.
        std::istringstream lines(out);
        std::string line;
        while (std::getline(lines, line))
            if (line.rfind("MESSAGE ", 0) == 0) std::cout << "[web] " << line << "\n";
    }
    std::cout << "[web] screenshots in " << SG_TEST_ARTIFACTS_DIR << "/web-*.png\n";
}

namespace {

// Talks HTTPS to the gateway (verifying its certificate) and prints one OK line per check.
const char* k_tls_check = R"py(
import http.client, json, ssl, sys, time
port, ca, user, password, idle = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
ctx = ssl.create_default_context(cafile=ca)
def req(method, path, body=None, cookie=""):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
    h = {"Cookie": cookie} if cookie else {}
    if body is not None:
        h["Content-Type"] = "application/json"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    out = (r.status, r.read().decode(), r.getheader("Set-Cookie") or "", r.getheader("Content-Type") or "")
    c.close()
    return out
status, body, cookie, _ = req("POST", "/api/login", {"user": user, "password": password})
assert status == 200, (status, body)
assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
print("OK secure-cookie")
jar = cookie.split(";", 1)[0]
status, body, _, _ = req("GET", "/api/me", cookie=jar)
assert status == 200 and json.loads(body)["user"] == user, (status, body)
print("OK https-session")
status, body, _, ctype = req("GET", "/xterm/xterm.js")
assert status == 200 and 'defs["public/Terminal"]' in body and ctype.startswith("text/javascript"), (status, ctype)
print("OK xterm-from-debian")
time.sleep(idle + 1.5)  # the idle timeout itself is what is tested: nothing to wait on but time
status, body, _, _ = req("GET", "/api/me", cookie=jar)
assert status == 401 and "idle" in body, (status, body)
print("OK idle-logout")
)py";

}  // namespace

TEST_CASE("web gateway: HTTPS with a Secure cookie, plain HTTP refused off loopback, idle logout",
          "[integration][web]") {
    relay_fixture relay;
    const fs::path users = relay.dir() / "users.toml";
    add_user(users, "carol", "carol-password-1", "*", false);
    const std::string service_cs = relay.service_connection_string();

    // Plain HTTP on a non-loopback address needs --allow-plain-http.
    {
        std::vector<std::string> argv = {SG_WEB_BIN, "--listen", "0.0.0.0:0", "--users", users.string(),
                                         "--connection-string", service_cs, "--data-dir", (relay.dir() / "d1").string(),
                                         "--recordings", (relay.dir() / "r1").string()};
        run_result r = run(argv);
        INFO(describe(argv, r));
        CHECK(r.exit_code == 2);
        CHECK(contains(r.err, "refusing plain HTTP on 0.0.0.0:0"));
    }
    const fs::path cert = relay.dir() / "web.crt", key = relay.dir() / "web.key";
    {
        std::vector<std::string> argv = {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                                         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key.string(),
                                         "-out", cert.string(), "-days", "1", "-subj", "/CN=127.0.0.1",
                                         "-addext", "subjectAltName=IP:127.0.0.1"};
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
    }
    std::unique_ptr<process> web = relay.spawn(
        "web-tls", {SG_WEB_BIN, "--listen", "127.0.0.1:0", "--tls-cert", cert.string(), "--tls-key", key.string(),
                    "--users", users.string(), "--connection-string", service_cs, "--ca-file",
                    relay.ca_file().string(), "--data-dir", (relay.dir() / "d2").string(), "--recordings",
                    (relay.dir() / "r2").string(), "--idle-timeout", "1"});
    const std::string address = wait_listening_address(*web, "event=WebListening");
    INFO(web->describe());
    REQUIRE_FALSE(address.empty());
    CHECK(contains(web->stderr_text(), "scheme=https"));
    const std::string port = address.substr(address.rfind(':') + 1);
    std::vector<std::string> argv = {"python3", "-c", k_tls_check, port, cert.string(), "carol", "carol-password-1", "1"};
    run_result r = run(argv);
    INFO(describe(argv, r));
    CHECK(r.exit_code == 0);
    for (const char* name : {"secure-cookie", "https-session", "xterm-from-debian", "idle-logout"})
        CHECK(contains(r.out, std::string("OK ") + name + "\n"));
    CHECK_FALSE(contains(web->stderr_text(), "carol-password-1"));
}
