// streamgate-web's plain parts: users and password hashes, pinned host keys, cast files.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <boost/json.hpp>

#include "common/connection_string.hpp"
#include "web/host_keys.hpp"
#include "web/internal.hpp"
#include "web/recording.hpp"
#include "web/users.hpp"

namespace fs = std::filesystem;
using namespace sg::web;

namespace {

struct scratch_dir {
    fs::path path;
    scratch_dir()
    {
        char tmpl[] = "/tmp/sg-web-unit-XXXXXX";
        path = ::mkdtemp(tmpl);
    }
    ~scratch_dir() { fs::remove_all(path); }
};

std::string slurp(const fs::path& p)
{
    std::ifstream in(p);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

} // namespace

TEST_CASE("passwords are yescrypt hashes with a fresh salt, verified exactly", "[web]")
{
    std::string a = hash_password("correct horse");
    std::string b = hash_password("correct horse");
    CHECK(a.rfind("$y$", 0) == 0);
    CHECK(a != b);
    CHECK(verify_password("correct horse", a));
    CHECK(verify_password("correct horse", b));
    CHECK_FALSE(verify_password("correct horsE", a));
    CHECK_FALSE(verify_password("", a));
    CHECK_FALSE(verify_password("correct horse", "not a hash"));
    CHECK(a.find("correct") == std::string::npos);
}

TEST_CASE("the users file round-trips and device globs decide what a user may reach", "[web]")
{
    scratch_dir dir;
    auto file = dir.path / "users.toml";
    CHECK(user_store::load(file).size() == 0); // no file yet: no users
    user_store store;
    store.put(user{"alice", hash_password("pw-alice-1"), {"lab-*", "edge-7"}, true});
    store.put(user{"bob", hash_password("pw-bob-12"), {"lab-?"}, false});
    store.save(file);
    CHECK((fs::status(file).permissions() & fs::perms::others_read) == fs::perms::none);
    auto loaded = user_store::load(file);
    REQUIRE(loaded.size() == 2);
    const user* alice = loaded.find("alice");
    REQUIRE(alice);
    CHECK(alice->admin);
    CHECK(verify_password("pw-alice-1", alice->password_hash));
    CHECK(alice->may_reach("lab-1"));
    CHECK(alice->may_reach("lab-anything"));
    CHECK(alice->may_reach("edge-7"));
    CHECK_FALSE(alice->may_reach("edge-70"));
    CHECK_FALSE(alice->may_reach("other-1"));
    const user* bob = loaded.find("bob");
    REQUIRE(bob);
    CHECK_FALSE(bob->admin);
    CHECK(bob->may_reach("lab-1"));
    CHECK_FALSE(bob->may_reach("lab-12"));
    CHECK(loaded.find("carol") == nullptr);
}

TEST_CASE("a users file without a hash or with a bad name is refused, naming the file", "[web]")
{
    scratch_dir dir;
    auto file = dir.path / "users.toml";
    std::ofstream(file) << "[users.alice]\npassword = \"plain\"\ndevices = [\"*\"]\n";
    CHECK_THROWS_WITH(user_store::load(file), Catch::Contains("users.toml") && Catch::Contains("no password hash"));
    std::ofstream(file, std::ios::trunc) << "[users.alice\n";
    CHECK_THROWS_AS(user_store::load(file), sg::config_error);
    CHECK(is_valid_user_name("alice.b_c-1"));
    CHECK_FALSE(is_valid_user_name(""));
    CHECK_FALSE(is_valid_user_name("a b"));
    CHECK_FALSE(is_valid_user_name(std::string(65, 'a')));
}

TEST_CASE("host keys: pinned on first use, then matched, a different key is refused, across restarts", "[web]")
{
    scratch_dir dir;
    auto file = dir.path / "known_hosts";
    {
        host_key_store keys(file);
        CHECK(keys.pinned("dev") == "");
        CHECK(keys.check("dev", "ssh-ed25519", "SHA256:one") == host_key_check::pinned_now);
        CHECK(keys.check("dev", "ssh-ed25519", "SHA256:one") == host_key_check::matches);
        CHECK(keys.check("dev", "ssh-ed25519", "SHA256:two") == host_key_check::changed);
        CHECK(keys.check("dev", "ssh-rsa", "SHA256:one") == host_key_check::changed);
        CHECK(keys.check("other", "ssh-ed25519", "SHA256:two") == host_key_check::pinned_now);
    }
    host_key_store again(file);
    CHECK(again.pinned("dev") == "ssh-ed25519 SHA256:one");
    CHECK(again.check("dev", "ssh-ed25519", "SHA256:two") == host_key_check::changed);
    CHECK(again.check("other", "ssh-ed25519", "SHA256:two") == host_key_check::matches);
    CHECK(slurp(file) == "dev ssh-ed25519 SHA256:one\nother ssh-ed25519 SHA256:two\n");
}

TEST_CASE("fingerprints are OpenSSH's SHA256 form", "[web]")
{
    // sha256("") = e3b0c442...; base64 without padding, as ssh-keygen -l prints it.
    CHECK(ssh_fingerprint("") == "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU");
}

TEST_CASE("cast files are asciinema v2: a header without credentials, one JSON event per line", "[web]")
{
    scratch_dir dir;
    session_info info{"abc_DEF-1", "alice", "lab-1", "root", "password", 100, 30};
    {
        cast_writer cast(dir.path, info);
        cast.output("hello\r\n");
        cast.output(std::string("bad \xff utf-8 \xe2\x82", 13));
    }
    std::istringstream lines(slurp(dir.path / "abc_DEF-1.cast"));
    std::string line;
    REQUIRE(std::getline(lines, line));
    auto header = boost::json::parse(line).as_object();
    CHECK(header.at("version").as_int64() == 2);
    CHECK(header.at("width").as_int64() == 100);
    CHECK(header.at("height").as_int64() == 30);
    CHECK(header.at("streamgate").as_object().at("web_user").as_string() == "alice");
    // Who, where and how (the method's name), never a credential.
    std::set<std::string> keys;
    for (auto& [k, v] : header.at("streamgate").as_object())
        keys.insert(std::string(k));
    CHECK(keys == std::set<std::string>{"web_user", "device", "ssh_user", "auth"});
    REQUIRE(std::getline(lines, line));
    auto first = boost::json::parse(line).as_array();
    CHECK(first.at(1).as_string() == "o");
    CHECK(first.at(2).as_string() == "hello\r\n");
    REQUIRE(std::getline(lines, line));
    auto second = boost::json::parse(line).as_array(); // invalid UTF-8 still makes valid JSON
    CHECK(std::string(second.at(2).as_string()).find("\xEF\xBF\xBD") != std::string::npos);
    CHECK(is_valid_recording_id("abc_DEF-1"));
    CHECK_FALSE(is_valid_recording_id("../etc/passwd"));
    CHECK_FALSE(is_valid_recording_id(""));
}

TEST_CASE("the browser's first terminal message needs a user and a password or key", "[web]")
{
    std::string error;
    auto ok = parse_terminal_start(R"({"user":"root","key":"-----BEGIN","cols":5000,"rows":1})", error);
    REQUIRE(ok);
    CHECK(ok->credentials.user == "root");
    CHECK(ok->credentials.private_key == "-----BEGIN");
    CHECK(ok->cols == 1000);
    CHECK(ok->rows == 2);
    CHECK_FALSE(parse_terminal_start(R"({"password":"x"})", error));
    CHECK(error == "an SSH user name is required");
    CHECK_FALSE(parse_terminal_start(R"({"user":"root"})", error));
    CHECK(error == "an SSH password or private key is required");
    CHECK_FALSE(parse_terminal_start("not json", error));
}

TEST_CASE("web sessions: random cookies, CSRF tokens, logout, and failed logins limited per name and address", "[web]")
{
    scratch_dir dir;
    options o;
    o.users_file = dir.path / "users.toml";
    o.data_dir = dir.path;
    o.recordings_dir = dir.path;
    o.login_failures_per_minute = 3;
    gateway_state state(o);
    std::string csrf1, csrf2;
    std::string t1 = state.create_session("alice", csrf1);
    std::string t2 = state.create_session("alice", csrf2);
    CHECK(t1 != t2);
    CHECK(csrf1 != csrf2);
    CHECK(t1.size() >= 43); // 32 random bytes
    auto s1 = state.find_session(t1);
    REQUIRE(s1);
    CHECK(s1->user == "alice");
    CHECK(s1->csrf == csrf1);
    CHECK_FALSE(state.find_session(""));
    CHECK_FALSE(state.find_session(t1 + "x"));
    CHECK(state.session_alive(t2));
    state.end_session(t1);
    CHECK_FALSE(state.find_session(t1));
    CHECK_FALSE(state.session_alive(t1));
    CHECK(state.find_session(t2)); // the other session is untouched

    // At most 16 sessions per user: the least recently used goes.
    std::string first_csrf;
    std::string first = state.create_session("erin", first_csrf);
    for (int i = 0; i < 16; ++i) {
        std::string c;
        state.create_session("erin", c);
    }
    CHECK_FALSE(state.find_session(first));
    CHECK(state.find_session(t2)); // another user's session stays

    CHECK(state.login_allowed("bob", "10.0.0.1"));
    for (int i = 0; i < 3; ++i)
        state.login_failed("bob", "10.0.0.1");
    CHECK_FALSE(state.login_allowed("bob", "10.0.0.1"));
    CHECK_FALSE(state.login_allowed("bob", "10.0.0.2")); // per name, from anywhere
    CHECK(state.login_allowed("carol", "10.0.0.1"));     // the address has room (4 x 3)
    for (int i = 0; i < 11; ++i)
        state.login_failed("user" + std::to_string(i), "10.0.0.9");
    CHECK(state.login_allowed("dave", "10.0.0.9")); // 11 of 12
    state.login_failed("user11", "10.0.0.9");
    CHECK_FALSE(state.login_allowed("dave", "10.0.0.9")); // 12 failures from one address
    CHECK(state.login_allowed("dave", "10.0.0.3"));
}
