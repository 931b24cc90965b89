// The relay on a PostgreSQL registry (issue 10, first slice): --registry postgresql://..., the
// admin CLI and REST against it, revocation through LISTEN/NOTIFY, `migrate` from SQLite, and the
// database going away and coming back. A real PostgreSQL 15 per test (tests/support/pg_server).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <regex>

#include "admin_http_client.hpp"
#include "harness.hpp"
#include "../support/pg_server.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

// A relay on `url`; the fixture's admin commands get the same --registry.
relay_config on_registry(const std::string& url) { return relay_config{.args = {"--registry", url}}; }

std::string auth(const std::string& token) { return "Authorization: " + token; }

// A REST request on connection "c".
std::string rest(const std::string& label, const std::string& method, const std::string& path,
                 const std::string& token, const std::string& body = "", const std::vector<std::string>& extra = {}) {
    std::vector<std::string> headers = {auth(token)};
    headers.insert(headers.end(), extra.begin(), extra.end());
    return step({{"op", "request"}, {"label", label.c_str()}, {"conn", "c"}, {"method", method},
                 {"path", path}, {"headers", headers}, {"body", body}});
}

const wire_event& response(const wire_result& w, const std::string& label, int status) {
    const wire_event& e = w.at(label);
    INFO("step " << label << ": " << e.line);
    INFO(w.describe());
    CHECK(e.event() == "response");
    CHECK(e.status() == status);
    return e;
}

std::string registry_token(relay_fixture& relay, const std::string& policy) {
    return sas_token(relay_host(relay), policy_key(relay, policy), policy, unix_now() + 600);
}

// The echo sample through the relay: the echo service's message comes back.
void expect_echo(relay_fixture& relay, const std::string& service_cs, const std::string& device_id) {
    const std::string message = "echo over postgres " + sha256_hex(random_bytes(8)).substr(0, 12);
    const std::vector<std::string> argv = {bin::echo_service, "--ca-file", relay.ca_file().string(), service_cs,
                                           device_id, message};
    run_result r = run(argv);
    INFO(describe(argv, r));
    CHECK(r.exit_code == 0);
    CHECK(contains(r.out, message));
}

// How long after `since` the relay logged `line` (nullopt if not within `timeout`).
std::optional<millis> logged_after(relay_fixture& relay, const std::string& line, steady::time_point since,
                                   millis timeout) {
    if (!wait_until([&] { return contains(relay.relay().stderr_text(), line); }, timeout, 10ms)) return std::nullopt;
    return std::chrono::duration_cast<millis>(steady::now() - since);
}

}  // namespace

TEST_CASE("postgres: --registry, STREAMGATE_REGISTRY and the TOML key, the password masked", "[integration][postgres]") {
    temp_dir dir;
    const std::string url = "postgresql://sg:pw-s3cret@db.example:5432/streamgate";
    {
        run_result r = run({bin::relay, "--registry", url, "--print-config"});
        INFO(r.out << r.err);
        CHECK(r.exit_code == 0);
        CHECK(contains(r.out, "registry = \"postgresql://sg:***@db.example:5432/streamgate\""));
        CHECK(contains(r.out, "# env STREAMGATE_REGISTRY"));
        CHECK_FALSE(contains(r.out + r.err, "pw-s3cret"));
    }
    {
        run_result r = run({bin::relay, "--print-config"}, {{"STREAMGATE_REGISTRY", url}});
        CHECK(contains(r.out, "registry = \"postgresql://sg:***@db.example:5432/streamgate\""));
        CHECK_FALSE(contains(r.out, "pw-s3cret"));
    }
    {
        const auto file = dir / "relay.toml";
        std::ofstream(file) << "registry = \"" << url << "\"\n";
        run_result r = run({bin::relay, "--config", file.string(), "--print-config"});
        CHECK(contains(r.out, "registry = \"postgresql://sg:***@db.example:5432/streamgate\""));
    }
    {
        // Not a registry URL: a clear error, exit 2 like any configuration error... or 1 for a
        // relay that cannot open its registry; either way it names the option and hides nothing.
        run_result r = run({bin::relay, "--data-dir", (dir / "sg").string(), "--registry", "mysql://u:pw-s3cret@h/d",
                            "device-identity", "list"});
        INFO(r.err);
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "--registry"));
        CHECK_FALSE(contains(r.err, "pw-s3cret"));
    }
}

TEST_CASE("postgres: a relay on --registry postgresql:// serves the admin CLI, echo streams, revocation and REST",
          "[integration][postgres]") {
    sgtest::pg_server pg;
    const std::string url = pg.create_database("relay");
    relay_fixture relay(on_registry(url));
    {
        const std::string log = relay.relay().stderr_text();
        INFO(log);
        CHECK(contains(log, "registry=\"postgresql://streamgate:***@127.0.0.1:" + std::to_string(pg.port()) + "/relay\""));
        CHECK_FALSE(contains(log, pg.password()));
    }
    // The admin CLI (another process) writes to the database; nothing goes to a SQLite file.
    const std::string device_cs = relay.create_device("pg-echo");
    CHECK_FALSE(std::filesystem::exists(relay.data_dir() / "registry.db"));
    CHECK(pg.psql("relay", "SELECT device_id FROM devices") == "pg-echo\n");
    const std::string service_cs = relay.service_connection_string();
    auto device = relay.spawn("echo-device", {bin::echo_device, "--ca-file", relay.ca_file().string(), device_cs});
    REQUIRE(relay.wait_device_connected("pg-echo", *device));
    expect_echo(relay, service_cs, "pg-echo");

    // A key renewed through the admin CLI cuts the live control connection within a second.
    echo_server target;
    relay.create_device("pg-renew");
    auto proxy = spawn_device_proxy(relay, "device-proxy", device_connection_string(relay, "pg-renew"), target.port());
    REQUIRE(relay.wait_device_connected("pg-renew", *proxy));
    admin_ok(relay, {"device-identity", "update", "--device-id", "pg-renew", "--renew-key", "primary"});
    const auto renewed = steady::now();
    auto cut = logged_after(relay, "event=DeviceRevoked device=pg-renew", renewed, 5s);
    REQUIRE(cut);
    INFO("cut after " << cut->count() << " ms");
    CHECK(*cut < 1000ms);
    CHECK(wait_until([&] { return contains(proxy->stderr_text(), "401003"); }, 5s));
    const std::regex audited(R"(event=RegistryChange source="admin-cli uid=\d+[^"]*" op=device-update subject=pg-renew )");
    CHECK(wait_until([&] { return std::regex_search(relay.relay().stderr_text(), audited); }, 5s));
    CHECK(relay.device_connected("pg-echo")); // the other device is untouched

    // REST: PUT creates, GET reads, a stale If-Match is 412, DELETE needs the current etag.
    const std::string token = registry_token(relay, "registryReadWrite");
    wire_result w = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "c"}}),
        rest("put", "PUT", "/devices/pg-rest", token, R"({"deviceId":"pg-rest"})"),
        rest("get", "GET", "/devices/pg-rest", token),
        rest("put-stale", "PUT", "/devices/pg-rest", token, R"({"status":"disabled"})", {"If-Match: \"stale\""}),
        rest("put-current", "PUT", "/devices/pg-rest", token, R"({"status":"disabled"})",
             {"If-Match: \"${put.j.etag}\""}),
        rest("delete-stale", "DELETE", "/devices/pg-rest", token, "", {"If-Match: \"${put.j.etag}\""}),
        rest("get-disabled", "GET", "/devices/pg-rest", token),
    });
    const auto& put = response(w, "put", 200);
    CHECK_FALSE(put.get("j.etag").empty());
    CHECK(response(w, "get", 200).get("j.etag") == put.get("j.etag"));
    CHECK(response(w, "put-stale", 412).error_code() == 412001);
    const auto& current = response(w, "put-current", 200);
    CHECK(current.get("j.etag") != put.get("j.etag"));
    CHECK(response(w, "delete-stale", 412).error_code() == 412001);
    CHECK(response(w, "get-disabled", 200).get("j.status") == "disabled");
    // The admin CLI in another process sees the same device and etag.
    CHECK(contains(admin_ok(relay, {"device-identity", "show", "--device-id", "pg-rest"}),
                   "\"etag\":\"" + current.get("j.etag") + "\""));
    wire_result d = wire_script(relay, {
        step({{"op", "connect"}, {"conn", "c"}}),
        rest("delete", "DELETE", "/devices/pg-rest", token, "", {"If-Match: \"" + current.get("j.etag") + "\""}),
        rest("gone", "GET", "/devices/pg-rest", token),
    });
    response(d, "delete", 204);
    CHECK(response(d, "gone", 404).error_code() == 404001);
    CHECK(pg.psql("relay", "SELECT count(*) FROM devices WHERE device_id = 'pg-rest'") == "0\n");
    CHECK(pg.psql("relay", "SELECT count(*) FROM audit WHERE actor LIKE 'relay rest%'") == "3\n");
    CHECK_FALSE(contains(relay.relay().stderr_text(), pg.password()));
}

TEST_CASE("postgres: migrate copies a SQLite registry and the old connection strings keep working",
          "[integration][postgres]") {
    relay_fixture relay;  // SQLite, as it has been until now
    const auto& dir = relay.dir().path();
    const std::string device_cs = relay.create_device("mig-sas");
    const std::string service_cs = relay.service_connection_string();
    admin_ok(relay, {"device-identity", "create", "--device-id", "mig-x509", "--auth-method", "x509_thumbprint",
                     "--primary-thumbprint", std::string(64, 'A'), "--secondary-thumbprint", std::string(64, 'B')});
    admin_ok(relay, {"device-identity", "create", "--device-id", "mig-renewed"});
    admin_ok(relay, {"device-identity", "update", "--device-id", "mig-renewed", "--renew-key", "both"});
    const cert_files ca = make_self_signed(dir, "mig-ca", "Streamgate Migrate CA", true);
    admin_ok(relay, {"certificate", "add", "--name", "mig-ca", "--path", ca.cert.string()});
    const std::string before_sas = admin_ok(relay, {"device-identity", "show", "--device-id", "mig-sas"});
    const std::string before_x509 = admin_ok(relay, {"device-identity", "show", "--device-id", "mig-x509"});
    const std::string owner_cs = policy_connection_string(relay, "iothubowner");
    REQUIRE(relay.stop(SIGTERM) == 0);

    sgtest::pg_server pg;
    const std::string url = pg.create_database("migrated");
    {
        run_result r = relay.admin({"migrate", "--to", url});
        INFO(r.out << r.err);
        REQUIRE(r.exit_code == 0);
        CHECK(contains(r.out, "devices: 3\n"));
        CHECK(contains(r.out, "policies: 5\n"));
        CHECK(contains(r.out, "audit entries: 5\n"));  // 3 creates, 1 update, 1 certificate-add
        CHECK(contains(r.out, "device CAs: 1\n"));
        CHECK(pg.psql("migrated", "SELECT name FROM device_cas") == "mig-ca\n");
        CHECK(contains(r.out, "postgresql://streamgate:***@"));
        CHECK_FALSE(contains(r.out + r.err, pg.password()));
    }
    {
        // A second run finds the target in use and changes nothing.
        run_result r = relay.admin({"migrate", "--to", url});
        INFO(r.out << r.err);
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "is not empty"));
        CHECK(contains(r.err, "--force"));
        CHECK(pg.psql("migrated", "SELECT count(*) FROM devices") == "3\n");
        run_result forced = relay.admin({"migrate", "--to", url, "--force"});
        INFO(forced.out << forced.err);
        CHECK(forced.exit_code == 0);
    }
    // The audit trail came along, and says it was migrated (the forced run replaced the first
    // run's entry with the source's trail, then added its own).
    CHECK(pg.psql("migrated", "SELECT count(*) FROM audit WHERE action = 'device-create'") == "3\n");
    CHECK(pg.psql("migrated", "SELECT count(*) FROM audit WHERE action = 'registry-migrate'") == "1\n");

    // The same data directory (certificates) and port, now on the PostgreSQL registry (with the device CA).
    auto admin_pg = [&](const std::vector<std::string>& args) {
        std::vector<std::string> argv = {bin::relay, "--data-dir", relay.data_dir().string(), "--registry", url};
        argv.insert(argv.end(), args.begin(), args.end());
        run_result r = run(argv);
        INFO(describe(argv, r));
        REQUIRE(r.exit_code == 0);
        return trim(r.out);
    };
    auto relay_pg = relay.spawn("relay-pg", {bin::relay, "--data-dir", relay.data_dir().string(), "--listen",
                                             "127.0.0.1:" + std::to_string(relay.port()), "--registry", url});
    REQUIRE(wait_until([&] { return !relay_pg->running() || port_listening_in(relay_pg->pid(), relay.port()); },
                       k_start_timeout));
    REQUIRE(relay_pg->running());
    CHECK(contains(relay_pg->stderr_text(), "registry=\"postgresql://"));
    // Same devices, etags, generation ids and keys; same policy keys; the CA is still listed.
    CHECK(admin_pg({"device-identity", "show", "--device-id", "mig-sas"}) == before_sas);
    CHECK(admin_pg({"device-identity", "show", "--device-id", "mig-x509"}) == before_x509);
    CHECK(admin_pg({"show-connection-string", "--policy-name", "iothubowner"}) == owner_cs);
    CHECK(contains(admin_pg({"certificate", "list"}), "mig-ca"));
    // The device's old connection string connects and streams with the old service string.
    auto device = relay.spawn("echo-device", {bin::echo_device, "--ca-file", relay.ca_file().string(), device_cs});
    bool connected = wait_until([&] {
        return !device->running() ||
               contains(admin_pg({"device-identity", "show", "--device-id", "mig-sas"}), "\"Connected\"");
    }, k_connect_timeout, 100ms);
    INFO(device->describe());
    INFO(relay_pg->describe());
    REQUIRE(connected);
    REQUIRE(device->running());
    expect_echo(relay, service_cs, "mig-sas");
}

TEST_CASE("postgres: with the database down admin writes fail with 503002 naming it, and the relay recovers by itself",
          "[integration][postgres]") {
    sgtest::pg_server pg;
    const std::string url = pg.create_database("outage");
    relay_fixture relay(on_registry(url));
    const std::string device_cs = relay.create_device("outage-dev");
    const std::string service_cs = relay.service_connection_string();
    const std::string token = registry_token(relay, "registryReadWrite");
    auto device = relay.spawn("echo-device", {bin::echo_device, "--ca-file", relay.ca_file().string(), device_cs});
    REQUIRE(relay.wait_device_connected("outage-dev", *device));
    const std::string late_cs = relay.create_device("late-dev");
    const pid_t relay_pid = relay.relay().pid();

    pg.stop("immediate");
    // A device that connects now is told the registry is unavailable, and keeps trying.
    echo_server target;
    auto late = spawn_device_proxy(relay, "device-proxy-late", late_cs, target.port());
    {
        bool told = wait_until([&] { return contains(late->stderr_text(), "503002"); }, k_fail_timeout);
        INFO(late->describe());
        CHECK(told);
        CHECK(late->running());
    }
    {
        const std::vector<std::string> args = {"device-identity", "create", "--device-id", "during-outage"};
        run_result r = relay.admin(args);
        INFO(describe(args, r));
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "503002 RegistryUnavailable"));
        CHECK(contains(r.err, "127.0.0.1:" + std::to_string(pg.port()) + "/outage"));
        CHECK_FALSE(contains(r.err, pg.password()));
    }
    {
        wire_result w = wire_script(relay, {step({{"op", "connect"}, {"conn", "c"}}),
                                            rest("put", "PUT", "/devices/during-outage", token, "{}"),
                                            rest("get", "GET", "/devices/outage-dev", token)});
        const auto& put = response(w, "put", 503);
        CHECK(put.error_code() == 503002);
        CHECK(put.get("h.retry-after") == "5");
        CHECK(contains(put.get("j.message"), "registry database is unavailable"));
        // Clients learn nothing about the database; the relay's log names it.
        CHECK_FALSE(contains(put.get("j.message"), std::to_string(pg.port())));
        CHECK(contains(relay.relay().stderr_text(), "event=RegistryUnavailable"));
        CHECK(contains(relay.relay().stderr_text(), "127.0.0.1:" + std::to_string(pg.port()) + "/outage"));
        CHECK(response(w, "get", 503).error_code() == 503002);
    }
    {
        // A relay that starts now stops at once, saying why.
        const std::vector<std::string> argv = {bin::relay, "--data-dir", (relay.dir() / "second").string(), "--listen",
                                               "127.0.0.1:0", "--admin-listen", "off", "--registry", url};
        run_result r = run(argv, {}, k_fail_timeout);
        INFO(describe(argv, r));
        CHECK(r.exit_code == 1);
        CHECK(contains(r.err, "127.0.0.1:" + std::to_string(pg.port()) + "/outage"));
        CHECK(contains(r.err, "database unavailable"));
        CHECK_FALSE(contains(r.err, pg.password()));
    }
    // The relay and the device's control connection stay up meanwhile.
    CHECK(relay.relay().running());
    CHECK(device->running());

    pg.start();
    // No relay restart: the same process serves the admin CLI, REST and streams again.
    CHECK(wait_until([&] { return relay.admin({"device-identity", "list"}).exit_code == 0; }, 10s, 200ms));
    admin_ok(relay, {"device-identity", "create", "--device-id", "after-outage"});
    wire_result w = wire_script(relay, {step({{"op", "connect"}, {"conn", "c"}}),
                                        rest("get", "GET", "/devices/after-outage", token)});
    response(w, "get", 200);
    expect_echo(relay, service_cs, "outage-dev");
    {
        bool connected = relay.wait_device_connected("late-dev", *late);
        INFO(late->describe());
        CHECK(connected);
    }
    CHECK(relay.relay().pid() == relay_pid);
    CHECK(relay.relay().running());
    CHECK(contains(relay.relay().stderr_text(), "event=RegistryUnavailable"));
    CHECK_FALSE(contains(relay.relay().stderr_text(), pg.password()));
}

std::size_t count_lines(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

TEST_CASE("postgres: with the database down, credentials read within --registry-cache-ttl still authenticate, "
          "never past a change the relay saw", "[integration][postgres]") {
    sgtest::pg_server pg;
    const std::string url = pg.create_database("cache");
    relay_fixture relay(relay_config{.args = {"--registry", url, "--admin-listen", "127.0.0.1:0"}});
    const std::string a_cs = relay.create_device("cache-a");
    const std::string b_cs = relay.create_device("cache-b");
    const std::string c_cs = relay.create_device("cache-c");
    const std::string service_cs = relay.service_connection_string();
    // A change the relay reads forgets what it had read of its subject: let it read the creates first.
    REQUIRE(wait_until([&] { return contains(relay.relay().stderr_text(), "op=device-create subject=cache-c"); }, 5s));
    echo_server target;
    auto a = spawn_device_proxy(relay, "device-proxy-a", a_cs, target.port());
    REQUIRE(relay.wait_device_connected("cache-a", *a));
    auto b = spawn_device_proxy(relay, "device-proxy-b", b_cs, target.port());
    REQUIRE(relay.wait_device_connected("cache-b", *b));
    expect_echo(relay, service_cs, "cache-a");  // the service policy is read here
    // b's key renewed: the relay cuts it and forgets what it had read of it.
    admin_ok(relay, {"device-identity", "update", "--device-id", "cache-b", "--renew-key", "primary"});
    REQUIRE(wait_until([&] { return contains(relay.relay().stderr_text(), "event=DeviceRevoked device=cache-b"); }, 5s));
    a->kill(SIGTERM);
    REQUIRE(a->wait_exit(k_fail_timeout));
    REQUIRE(wait_until([&] { return contains(relay.relay().stderr_text(), "event=DeviceDisconnected device=cache-a"); }, 5s));

    pg.stop("immediate");
    auto connected = [&](const std::string& id) {
        return count_lines(relay.relay().stderr_text(), "event=DeviceConnected device=" + id + " ");
    };
    // a was read a moment ago: it connects again from the cache, and streams work on this relay.
    a = spawn_device_proxy(relay, "device-proxy-a2", a_cs, target.port());
    CHECK(wait_until([&] { return connected("cache-a") == 2; }, k_connect_timeout));
    CHECK(contains(relay.relay().stderr_text(), "event=CredentialsFromCache device=cache-a"));
    expect_echo(relay, service_cs, "cache-a");
    CHECK(contains(relay.relay().stderr_text(), "event=CredentialsFromCache policy=service"));
    // c was never read: 503002, and it keeps trying.
    auto c = spawn_device_proxy(relay, "device-proxy-c", c_cs, target.port());
    CHECK(wait_until([&] { return contains(c->stderr_text(), "503002"); }, k_fail_timeout));
    CHECK(c->running());
    // b (old key, still retrying) is not let in from memory.
    CHECK(wait_until([&] { return count_lines(b->stderr_text(), "503002") >= 1; }, k_fail_timeout));
    CHECK(connected("cache-b") == 1);
    CHECK_FALSE(contains(relay.relay().stderr_text(), "event=CredentialsFromCache device=cache-b"));
    const std::string admin = wait_listening_address(relay.relay(), "event=AdminListening");
    CHECK(metric(http_get(admin, "/metrics").body, "streamgate_registry_cache_served_total").value_or(0) >= 2);

    pg.start();
    CHECK(relay.wait_device_connected("cache-c", *c, 20s));
}
