// Config files, --print-config and --log-format json with the real binaries: the example configs
// in deploy/config, a relay run only from a config file serving a stream, the command line and
// environment overriding the file, secrets masked, JSON log lines that parse.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <map>

#include "harness.hpp"

using namespace sgit;
namespace fs = std::filesystem;

namespace {

// A TOML basic string (the values here have no control characters).
std::string toml_quote(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

void write_text(const fs::path& p, const std::string& text) {
    std::ofstream(p) << text;
}

// The key of a connection string (what must never be printed).
std::string shared_access_key(const std::string& connection_string) {
    const std::string marker = "SharedAccessKey=";
    const auto at = connection_string.find(marker);
    REQUIRE(at != std::string::npos);
    const auto end = connection_string.find(';', at);
    return connection_string.substr(at + marker.size(),
                                    end == std::string::npos ? std::string::npos : end - at - marker.size());
}

// Every key of the example file comes back from --print-config with the same value, except masked
// ones: those keep their text up to the mask and the secret does not appear anywhere.
const char* const k_round_trip_check = R"py(
import sys, tomllib
example_text = open(sys.argv[1], 'rb').read()
printed_text = open(sys.argv[2], 'rb').read()
example = tomllib.loads(example_text.decode())
printed = tomllib.loads(printed_text.decode())
def norm(v):
    if isinstance(v, list): return [norm(x) for x in v]
    if isinstance(v, bool): return 'true' if v else 'false'
    return str(v)
problems = []
for key, value in example.items():
    if key not in printed:
        problems.append(f'{key}: not in --print-config'); continue
    want, got = norm(value), norm(printed[key])
    if want == got: continue
    if isinstance(got, str) and '***' in got and isinstance(want, str):
        shown = got.split('***')[0]
        secret = want[len(shown):].split(';')[0]
        if want.startswith(shown) and secret and secret.encode() not in printed_text: continue
    problems.append(f'{key}: file has {want!r}, --print-config says {got!r}')
print('\n'.join(problems)); sys.exit(1 if problems else 0)
)py";

// Every non-empty line of each file is a JSON object with exactly time, level, component and
// message; prints the number of lines.
const char* const k_json_lines_check = R"py(
import json, sys
count = 0
for path in sys.argv[1:]:
    for number, line in enumerate(open(path, encoding='utf-8'), 1):
        if not line.strip(): continue
        record = json.loads(line)
        assert isinstance(record, dict) and set(record) == {'time', 'level', 'component', 'message'}, (path, number, line)
        assert all(isinstance(v, str) for v in record.values()), (path, number, line)
        count += 1
print(count)
)py";

}  // namespace

TEST_CASE("config: every example in deploy/config is read by its binary and round-trips through --print-config",
          "[integration][config]") {
    // The binary is named by the file: relay*.toml, device-proxy*.toml, service-proxy*.toml, ...
    const std::map<std::string, std::string> binaries = {
        {"relay", bin::relay},
        {"device-proxy", bin::device_proxy},
        {"service-proxy", bin::service_proxy},
        {"echo-device", bin::echo_device},
        {"echo-service", bin::echo_service},
        {"web", SG_WEB_BIN},
    };
    std::vector<fs::path> examples;
    for (const auto& entry : fs::directory_iterator(SG_DEPLOY_CONFIG_DIR))
        if (entry.path().extension() == ".toml") examples.push_back(entry.path());
    REQUIRE(examples.size() >= 3);

    temp_dir dir;
    for (const auto& example : examples) {
        const std::string stem = example.stem().string();
        std::string binary;
        std::size_t matched = 0;
        for (const auto& [name, path] : binaries)
            if (stem.rfind(name, 0) == 0 && name.size() > matched) binary = path, matched = name.size();
        INFO("example " << example << " (name an example after its binary, e.g. relay-edge.toml)");
        REQUIRE_FALSE(binary.empty());

        const std::vector<std::string> argv = {binary, "--config", example.string(), "--print-config"};
        run_result printed = run(argv);
        INFO(describe(argv, printed));
        REQUIRE(printed.exit_code == 0);
        CHECK(contains(printed.out, "# Effective settings of streamgate-"));

        const fs::path printed_file = dir / (stem + ".printed.toml");
        write_text(printed_file, printed.out);
        const std::vector<std::string> check = {"python3", "-c", k_round_trip_check, example.string(),
                                                printed_file.string()};
        run_result compared = run(check);
        INFO("round trip: " << compared.out << compared.err);
        CHECK(compared.exit_code == 0);
    }
}

TEST_CASE("config: a relay started only from a config file serves an echo stream end to end",
          "[integration][config]") {
    temp_dir dir;
    const int port = free_port();
    const fs::path data_dir = dir / "sg";
    const fs::path relay_config = dir / "relay.toml";
    write_text(relay_config, "# relay for the test\n"
                             "data-dir = " + toml_quote(data_dir.string()) + "\n"
                             "listen = " + toml_quote("127.0.0.1:" + std::to_string(port)) + "\n"
                             "max-streams = 50\n"
                             "ip-filter = [\"accept 127.0.0.0/8\", \"reject 0.0.0.0/0\"]\n"
                             "ping-interval = 5\n");
    process relay("relay", {bin::relay, "--config", relay_config.string()}, dir.path());
    const fs::path ca_file = data_dir / "ca.pem";
    bool up = wait_until(
        [&] { return !relay.running() || (port_listening_in(relay.pid(), port) && fs::exists(ca_file)); },
        k_start_timeout);
    INFO(relay.describe());
    REQUIRE(relay.running());
    REQUIRE(up);

    // Admin commands take --data-dir from the same file.
    const auto admin = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {bin::relay, "--config", relay_config.string()});
        run_result r = run(args);
        INFO(describe(args, r));
        REQUIRE(r.exit_code == 0);
        return trim(r.out);
    };
    const std::string device_id = "config-device";
    const std::string device_cs = admin({"device-identity", "create", "--device-id", device_id});
    const std::string service_cs = admin({"show-connection-string", "--policy-name", "service"});
    CHECK(contains(device_cs, ":" + std::to_string(port) + ";DeviceId=" + device_id)); // the relay of this data dir

    // The echo device runs from its own config file too.
    const fs::path device_config = dir / "echo-device.toml";
    write_text(device_config, "connection-string = " + toml_quote(device_cs) + "\n"
                              "ca-file = " + toml_quote(ca_file.string()) + "\n");
    process device("echo-device", {bin::echo_device, "--config", device_config.string()}, dir.path());
    bool connected = wait_until(
        [&] {
            run_result r = run({bin::relay, "--config", relay_config.string(), "device-identity", "show",
                                "--device-id", device_id});
            return !device.running() || contains(r.out, "\"Connected\"");
        },
        k_connect_timeout, 100ms);
    INFO(device.describe());
    REQUIRE(device.running());
    REQUIRE(connected);

    const std::string message = "config file echo " + sha256_hex(random_bytes(8)).substr(0, 12);
    const std::vector<std::string> argv = {bin::echo_service, "--ca-file", ca_file.string(), service_cs, device_id,
                                           message};
    run_result echoed = run(argv);
    INFO(describe(argv, echoed));
    CHECK(echoed.exit_code == 0);
    CHECK(contains(echoed.out, "Received stream data: " + message));
}

TEST_CASE("config: the command line and the environment override the file", "[integration][config]") {
    temp_dir config_dir;
    const int file_port = free_port();
    const fs::path file = config_dir / "relay.toml";
    write_text(file, "listen = " + toml_quote("127.0.0.1:" + std::to_string(file_port)) + "\n"
                     "max-streams = 11\n"
                     "ping-interval = 7\n");

    // The fixture passes --listen and --data-dir on the command line: they win over the file.
    relay_fixture relay(relay_config{.args = {"--config", file.string()}});
    CHECK(relay.listening());
    CHECK_FALSE(port_listening_in(relay.relay().pid(), file_port));

    const std::vector<std::string> print = {bin::relay, "--config", file.string(), "--print-config"};
    run_result from_file = run(print);
    INFO(describe(print, from_file));
    REQUIRE(from_file.exit_code == 0);
    CHECK(contains(from_file.out, "\nmax-streams = 11\n"));
    CHECK(contains(from_file.out, "\nping-interval = 7\n"));

    run_result from_env = run(print, {{"STREAMGATE_MAX_STREAMS", "12"}});
    INFO(describe(print, from_env));
    REQUIRE(from_env.exit_code == 0);
    CHECK(contains(from_env.out, "\nmax-streams = 12\n"));
    CHECK(contains(from_env.out, "\nping-interval = 7\n"));

    std::vector<std::string> with_cli = print;
    with_cli.insert(with_cli.end(), {"--max-streams", "13"});
    run_result from_cli = run(with_cli, {{"STREAMGATE_MAX_STREAMS", "12"}});
    INFO(describe(with_cli, from_cli));
    REQUIRE(from_cli.exit_code == 0);
    CHECK(contains(from_cli.out, "\nmax-streams = 13\n"));
}

TEST_CASE("config: mistakes in a config file stop the binary with exit code 2 and name file and line",
          "[integration][config]") {
    temp_dir dir;
    const fs::path typo = dir / "typo.toml";
    write_text(typo, "listen = \"127.0.0.1:1\"\nmax-stream = 5\n");
    const fs::path broken = dir / "broken.toml";
    write_text(broken, "listen = \"127.0.0.1:1\"\nmax-streams = 5\nverbose = = true\n");
    for (const auto& binary : {bin::relay, bin::device_proxy, bin::service_proxy}) {
        const std::vector<std::string> argv = {binary, "--config", typo.string()};
        run_result r = run(argv);
        INFO(describe(argv, r));
        CHECK(r.exit_code == 2);
        if (binary == bin::relay) CHECK(contains(r.err, typo.string() + ":2: unknown key 'max-stream'"));
    }
    const std::vector<std::string> argv = {bin::relay, "--config", broken.string()};
    run_result r = run(argv);
    INFO(describe(argv, r));
    CHECK(r.exit_code == 2);
    CHECK(contains(r.err, broken.string() + ":3:"));
    CHECK(contains(r.err, "TOML syntax error"));
}

TEST_CASE("config: --print-config masks the keys of connection strings", "[integration][config]") {
    relay_fixture relay;
    const std::string device_cs = relay.create_device("masked-device");
    const std::string service_cs = relay.service_connection_string();
    const std::string device_key = shared_access_key(device_cs);
    const std::string service_key = shared_access_key(service_cs);

    const fs::path file = relay.dir() / "device-proxy.toml";
    write_text(file, "connection-string = " + toml_quote(device_cs) + "\nservice = [\"ssh=127.0.0.1:22\"]\n");
    const std::vector<std::vector<std::string>> commands = {
        {bin::device_proxy, "--config", file.string(), "--print-config"},
        {bin::device_proxy, "--print-config", device_cs, "127.0.0.1", "22"},
        {bin::service_proxy, "--print-config", service_cs, "masked-device", "2222"},
        {bin::echo_device, "--print-config", device_cs},
    };
    for (const auto& argv : commands) {
        run_result r = run(argv);
        INFO(describe(argv, r));
        CHECK(r.exit_code == 0);
        CHECK(contains(r.out, "SharedAccessKey=***"));
        CHECK_FALSE(contains(r.out + r.err, device_key));
        CHECK_FALSE(contains(r.out + r.err, service_key));
    }
    // The device proxy's effective settings include the file's mapping.
    run_result r = run(commands[0]);
    CHECK(contains(r.out, "service = [\"ssh=127.0.0.1:22\"]"));

    // With the connection string in a file, the other positionals go by name (ProxyCommand style).
    const fs::path service_file = relay.dir() / "service-proxy.toml";
    write_text(service_file, "connection-string = " + toml_quote(service_cs) + "\n");
    const std::vector<std::string> named = {bin::service_proxy, "--config", service_file.string(), "--stdio",
                                            "--device-id", "masked-device", "--print-config"};
    run_result s = run(named);
    INFO(describe(named, s));
    CHECK(s.exit_code == 0);
    CHECK(contains(s.out, "\ndevice-id = \"masked-device\"\n"));
    CHECK(contains(s.out, "\nstdio = true\n"));
    CHECK_FALSE(contains(s.out, service_key));
}

TEST_CASE("config: --log-format json makes every log line of relay and proxies a JSON object",
          "[integration][config]") {
    echo_server target;
    tunnel_fixture tunnel({.target_port = target.port(),
                           .device_proxy_args = {"--log-format", "json"},
                           .service_proxy_args = {"--log-format", "json"},
                           .relay_args = {"--log-format", "json"}});
    {
        unique_fd stream = open_echo_stream(tunnel.local_port);
    }
    // Each process logs its shutdown as well.
    tunnel.service_proxy->kill(SIGTERM);
    tunnel.device_proxy->kill(SIGTERM);
    CHECK(tunnel.service_proxy->wait_exit(k_start_timeout).has_value());
    CHECK(tunnel.device_proxy->wait_exit(k_start_timeout).has_value());
    CHECK(tunnel.relay.stop(SIGTERM).has_value());

    temp_dir dir;
    std::vector<std::string> check = {"python3", "-c", k_json_lines_check};
    for (process* p : {&tunnel.relay.relay(), tunnel.device_proxy.get(), tunnel.service_proxy.get()}) {
        const fs::path log = dir / (p->name() + ".stderr");
        write_text(log, p->stderr_text());
        check.push_back(log.string());
    }
    const std::string relay_log = tunnel.relay.relay().stderr_text();
    CHECK(contains(relay_log, "\"component\":\"relay\""));
    CHECK(contains(relay_log, "event=StreamEstablished device=" + tunnel.device_id));
    CHECK(contains(tunnel.device_proxy->stderr_text(), "\"component\":\"device-proxy\""));
    CHECK(contains(tunnel.service_proxy->stderr_text(), "\"component\":\"service-proxy\""));

    run_result parsed = run(check);
    INFO(describe(check, parsed));
    REQUIRE(parsed.exit_code == 0);
    CHECK(std::stoi(trim(parsed.out)) >= 6);
}
