// The config layer: TOML files through CLI11 (precedence, arrays, errors naming file and line),
// --print-config (round trip, masking) and the JSON log line.
#include <catch2/catch.hpp>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "common/config.hpp"
#include "common/log.hpp"

namespace fs = std::filesystem;

namespace {

// A file in a fresh temporary directory, removed afterwards.
class temp_toml {
public:
    explicit temp_toml(const std::string& text)
    {
        static std::atomic<int> counter{0};
        dir_ = fs::temp_directory_path() /
               ("sg-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::create_directories(dir_);
        std::ofstream(path()) << text;
    }
    ~temp_toml()
    {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }
    temp_toml(const temp_toml&) = delete;
    temp_toml& operator=(const temp_toml&) = delete;
    std::string path() const { return (dir_ / "test.toml").string(); }

private:
    fs::path dir_;
};

// Sets an environment variable for the lifetime of the object.
class scoped_env {
public:
    scoped_env(std::string name, const std::string& value) : name_(std::move(name))
    {
        ::setenv(name_.c_str(), value.c_str(), 1);
    }
    ~scoped_env() { ::unsetenv(name_.c_str()); }
    scoped_env(const scoped_env&) = delete;
    scoped_env& operator=(const scoped_env&) = delete;

private:
    std::string name_;
};

// A small program shaped like the real ones: options of each kind, the shared options, env names.
struct test_program {
    CLI::App app{"test program", "sg-test"};
    int max_streams = 100;
    std::string listen = "0.0.0.0:8443";
    double rate = 2.5;
    std::vector<std::string> ip_filter;
    bool verbose = false;
    std::string connection;
    std::string proxy;
    std::string token;
    std::ostringstream out, err;

    test_program()
    {
        app.add_option("connection-string", connection, "Connection string")->envname("SG_TEST_CONNECTION_STRING");
        app.add_option("--max-streams", max_streams, "Concurrent streams")->capture_default_str();
        app.add_option("--listen", listen, "Address")->capture_default_str();
        app.add_option("--stream-rate", rate, "Rate")->capture_default_str();
        app.add_option("--ip-filter", ip_filter, "Rules (repeatable)");
        app.add_option("--proxy", proxy, "HTTP proxy URL");
        app.add_option("--api-token", token, "A token");
        app.add_flag("-v,--verbose", verbose, "Debug logging");
        sg::cli::add_common_options(app, "sg-test 1.0");
        sg::cli::add_default_env_names(app);
    }

    int parse(std::vector<std::string> args)
    {
        args.insert(args.begin(), "sg-test");
        std::vector<const char*> argv;
        for (const auto& a : args)
            argv.push_back(a.c_str());
        return sg::cli::parse(app, static_cast<int>(argv.size()), argv.data(), out, err);
    }
};

} // namespace

TEST_CASE("config: a file sets options, without it the defaults stay", "[config]")
{
    temp_toml file("max-streams = 7\nlisten = \"127.0.0.1:9000\"\nstream-rate = 0.5\nverbose = true\n");
    test_program with_file;
    REQUIRE(with_file.parse({"--config", file.path()}) == -1);
    CHECK(with_file.max_streams == 7);
    CHECK(with_file.listen == "127.0.0.1:9000");
    CHECK(with_file.rate == Approx(0.5));
    CHECK(with_file.verbose);

    test_program without;
    REQUIRE(without.parse({}) == -1);
    CHECK(without.max_streams == 100);
    CHECK(without.listen == "0.0.0.0:8443");
    CHECK_FALSE(without.verbose);
}

TEST_CASE("config: precedence is command line > environment > file > default", "[config]")
{
    temp_toml file("max-streams = 7\nlisten = \"127.0.0.1:9000\"\n"
                   "connection-string = \"HostName=file;SharedAccessKeyName=service;SharedAccessKey=a2V5\"\n");
    SECTION("environment over file")
    {
        scoped_env env("STREAMGATE_MAX_STREAMS", "8");
        scoped_env cs("SG_TEST_CONNECTION_STRING", "HostName=env;SharedAccessKeyName=service;SharedAccessKey=a2V5");
        test_program p;
        REQUIRE(p.parse({"--config", file.path()}) == -1);
        CHECK(p.max_streams == 8);
        CHECK(p.listen == "127.0.0.1:9000"); // no env var for it: the file's
        CHECK(p.connection.rfind("HostName=env;", 0) == 0);
    }
    SECTION("command line over environment and file")
    {
        scoped_env env("STREAMGATE_MAX_STREAMS", "8");
        test_program p;
        REQUIRE(p.parse({"--config", file.path(), "--max-streams", "9", "HostName=cli;SharedAccessKeyName=s;SharedAccessKey=a2V5"}) == -1);
        CHECK(p.max_streams == 9);
        CHECK(p.connection.rfind("HostName=cli;", 0) == 0);
    }
    SECTION("an empty environment variable does not count")
    {
        scoped_env env("STREAMGATE_MAX_STREAMS", "");
        test_program p;
        REQUIRE(p.parse({"--config", file.path()}) == -1);
        CHECK(p.max_streams == 7);
    }
}

TEST_CASE("config: repeatable options take arrays, an empty array keeps the default", "[config]")
{
    temp_toml file("ip-filter = [\"accept 10.0.0.0/8\", \"reject 0.0.0.0/0\"]\n");
    test_program p;
    REQUIRE(p.parse({"--config", file.path()}) == -1);
    CHECK(p.ip_filter == std::vector<std::string>{"accept 10.0.0.0/8", "reject 0.0.0.0/0"});

    temp_toml empty("ip-filter = []\n");
    test_program q;
    REQUIRE(q.parse({"--config", empty.path()}) == -1);
    CHECK(q.ip_filter.empty());

    test_program cli;
    REQUIRE(cli.parse({"--config", file.path(), "--ip-filter", "accept 127.0.0.1/32"}) == -1);
    CHECK(cli.ip_filter == std::vector<std::string>{"accept 127.0.0.1/32"});
}

TEST_CASE("config: an unknown key is an error naming the key, file and line", "[config]")
{
    temp_toml file("listen = \"127.0.0.1:1\"\n\nmax-stream = 7\n");
    test_program p;
    CHECK(p.parse({"--config", file.path()}) == 2);
    const std::string err = p.err.str();
    INFO(err);
    CHECK(err.find("unknown key 'max-stream'") != std::string::npos);
    CHECK(err.find(file.path() + ":3") != std::string::npos);
}

TEST_CASE("config: a TOML syntax error gives file:line and exit code 2", "[config]")
{
    temp_toml file("listen = \"127.0.0.1:1\"\nmax-streams = 3\nverbose = = true\n");
    test_program p;
    CHECK(p.parse({"--config", file.path()}) == 2);
    const std::string err = p.err.str();
    INFO(err);
    CHECK(err.find(file.path() + ":3:") != std::string::npos);
    CHECK(err.find("TOML syntax error") != std::string::npos);
}

TEST_CASE("config: sections, arrays for single options, wrong switch values and --config in a file are refused",
          "[config]")
{
    const std::pair<std::string, std::string> cases[] = {
        {"[relay]\nlisten = \"a\"\n", "unknown section [relay]"},
        {"listen = [\"a\", \"b\"]\n", "'listen' takes one value"},
        {"verbose = \"yes\"\n", "'verbose' is a switch"},
        {"config = \"other.toml\"\n", "'config' cannot be set"},
        {"max-streams = \"many\"\n", "max-streams"},
    };
    for (const auto& [text, expected] : cases) {
        temp_toml file(text);
        test_program p;
        INFO(text);
        CHECK(p.parse({"--config", file.path()}) == 2);
        INFO(p.err.str());
        CHECK(p.err.str().find(expected) != std::string::npos);
    }
    test_program missing;
    CHECK(missing.parse({"--config", "/nonexistent/streamgate.toml"}) == 2);
}

TEST_CASE("config: --print-config output reads back to the same settings", "[config]")
{
    temp_toml file("max-streams = 7\nip-filter = [\"accept 10.0.0.0/8\", \"reject 0.0.0.0/0\"]\nverbose = true\n"
                   "listen = \"[::1]:9000\"\nstream-rate = 12.25\n");
    test_program first;
    REQUIRE(first.parse({"--config", file.path(), "--print-config"}) == -1);
    CHECK(sg::cli::print_config_requested(first.app));
    const std::string printed = sg::cli::effective_config(first.app);
    INFO(printed);
    CHECK(printed.find("max-streams = 7\n") != std::string::npos);
    CHECK(printed.find("ip-filter = [\"accept 10.0.0.0/8\", \"reject 0.0.0.0/0\"]\n") != std::string::npos);
    CHECK(printed.find("verbose = true\n") != std::string::npos);
    CHECK(printed.find("# proxy = (not set)\n") != std::string::npos);

    temp_toml again(printed);
    test_program second;
    REQUIRE(second.parse({"--config", again.path()}) == -1);
    CHECK(second.max_streams == 7);
    CHECK(second.ip_filter == first.ip_filter);
    CHECK(second.verbose);
    CHECK(second.listen == "[::1]:9000");
    CHECK(second.rate == Approx(12.25));
    CHECK(sg::cli::effective_config(second.app) == printed);
}

TEST_CASE("config: --print-config masks secrets by option name and by value", "[config]")
{
    temp_toml file("connection-string = \"HostName=relay:8443;SharedAccessKeyName=service;SharedAccessKey=c2VjcmV0LWtleQ==\"\n"
                   "proxy = \"http://alice:s3cr3t-pw@proxy.example:3128\"\n"
                   "api-token = \"tok-abcdef\"\n");
    test_program p;
    REQUIRE(p.parse({"--config", file.path()}) == -1);
    const std::string printed = sg::cli::effective_config(p.app);
    INFO(printed);
    CHECK(printed.find("c2VjcmV0LWtleQ") == std::string::npos);
    CHECK(printed.find("s3cr3t-pw") == std::string::npos);
    CHECK(printed.find("tok-abcdef") == std::string::npos);
    CHECK(printed.find("HostName=relay:8443;SharedAccessKeyName=service;SharedAccessKey=***") != std::string::npos);
    CHECK(printed.find("http://alice:***@proxy.example:3128") != std::string::npos);
    CHECK(printed.find("api-token = \"***\"") != std::string::npos);
}

TEST_CASE("config: mask_secrets and masked_value", "[config]")
{
    using sg::cli::mask_secrets;
    using sg::cli::masked_value;
    CHECK(mask_secrets("HostName=h;DeviceId=d;SharedAccessKey=abc+/=") == "HostName=h;DeviceId=d;SharedAccessKey=***");
    CHECK(mask_secrets("HostName=h;SharedAccessKeyName=service;SharedAccessKey=abc;x=1") ==
          "HostName=h;SharedAccessKeyName=service;SharedAccessKey=***;x=1");
    CHECK(mask_secrets("HostName=h;SharedAccessSignature=SharedAccessSignature sr=h&sig=abc&se=1") ==
          "HostName=h;SharedAccessSignature=***");
    CHECK(mask_secrets("SharedAccessSignature sr=h%2Fdevices%2Fd&sig=abc%2B&se=99") ==
          "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=***&se=99");
    CHECK(mask_secrets("http://user:pass@host:3128") == "http://user:***@host:3128");
    CHECK(mask_secrets("https://user:p%40ss@host") == "https://user:***@host");
    CHECK(mask_secrets("http://host:3128/path@x") == "http://host:3128/path@x");
    CHECK(mask_secrets("http://user@host:3128") == "http://user@host:3128");
    CHECK(mask_secrets("Authorization: Bearer abc.def") == "Authorization: Bearer ***");
    CHECK(mask_secrets("db password=hunter2 user=x") == "db password=*** user=x");
    CHECK(mask_secrets("127.0.0.1:8443") == "127.0.0.1:8443");

    CHECK(sg::cli::is_secret_option("proxy-password"));
    CHECK(sg::cli::is_secret_option("connection-string"));
    CHECK(sg::cli::is_secret_option("sas-token"));
    CHECK_FALSE(sg::cli::is_secret_option("key")); // a key *file*
    CHECK_FALSE(sg::cli::is_secret_option("listen"));
    CHECK(masked_value("proxy-password", "hunter2") == "***");
    CHECK(masked_value("connection-string", "HostName=h;DeviceId=d;x509=true") == "***");
    CHECK(masked_value("connection-string", "HostName=h;DeviceId=d;SharedAccessKey=k") ==
          "HostName=h;DeviceId=d;SharedAccessKey=***");
    CHECK(masked_value("proxy", "http://u:p@h:1") == "http://u:***@h:1");
    CHECK(masked_value("key", "/etc/streamgate/key.pem") == "/etc/streamgate/key.pem");
}

TEST_CASE("log: a JSON log line escapes the message and stays valid JSON", "[config][log]")
{
    CHECK(sg::json_log_line("2026-01-01T00:00:00.000Z", "info", "relay", "plain") ==
          R"({"time":"2026-01-01T00:00:00.000Z","level":"info","component":"relay","message":"plain"})");
    CHECK(sg::json_log_line("t", "warning", "device-proxy", "quote \" backslash \\ newline \n tab \t bell \x07") ==
          R"({"time":"t","level":"warning","component":"device-proxy","message":"quote \" backslash \\ newline \n tab \t bell \u0007"})");
    CHECK(sg::json_log_line("t", "info", "c", "caf\xC3\xA9 \xFF end") ==
          "{\"time\":\"t\",\"level\":\"info\",\"component\":\"c\",\"message\":\"caf\xC3\xA9 \\ufffd end\"}");
    CHECK(sg::json_log_line("t", "info", "c", "truncated \xE2\x82") ==
          R"({"time":"t","level":"info","component":"c","message":"truncated \ufffd\ufffd"})");
    CHECK(sg::parse_log_format("json") == sg::log_format::json);
    CHECK(sg::parse_log_format("text") == sg::log_format::text);
    CHECK_FALSE(sg::parse_log_format("xml"));
}

TEST_CASE("config: --log-format comes from STREAMGATE_LOG_FORMAT and refuses unknown formats", "[config][log]")
{
    {
        scoped_env env("STREAMGATE_LOG_FORMAT", "json");
        test_program p;
        REQUIRE(p.parse({}) == -1);
        CHECK(sg::current_log_format() == sg::log_format::json);
    }
    {
        test_program p;
        REQUIRE(p.parse({"--log-format", "text"}) == -1);
        CHECK(sg::current_log_format() == sg::log_format::text);
    }
    test_program bad;
    CHECK(bad.parse({"--log-format", "xml"}) == 2);
    sg::set_log_format(sg::log_format::text);
}
