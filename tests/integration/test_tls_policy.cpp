// The relay's TLS policy as any TLS client sees it (issue 11): the real `openssl s_client`, not
// our client, against a real relay. Only the relay's external behaviour is checked (versions,
// suites, renegotiation, the alerts on the wire), so the test holds whatever TLS code the relay
// runs inside.
//
// Every refusal is checked twice:
//   - the same s_client command line negotiates against a permissive `openssl s_server` (TLS 1.0
//     up, every suite at security level 0, client-initiated renegotiation allowed), so the
//     command can succeed and the refusal is not on the client's side;
//   - against the relay it fails, the client did send its hello, and the relay answered with the
//     alert the RFCs name (protocol_version 70, handshake_failure 40 or insufficient_security 71).
// The relay's generated certificate is ECDSA P-256, so suites that need an RSA key (static RSA,
// DHE-RSA) are refused by it for want of a key whatever its policy: they are tried against a
// relay started with an RSA certificate (--cert/--key) too, where only the policy can refuse them.
#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <regex>

#include "harness.hpp"
#include "wire.hpp"

using namespace sgit;

namespace {

constexpr millis k_probe_timeout = 10s;

// What one `openssl s_client` run showed.
struct tls_probe {
    std::vector<std::string> argv;
    std::optional<int> exit_code;
    std::string output;    // stdout, then stderr
    std::string protocol;  // the session's "Protocol": "TLSv1.2", "TLSv1.3" (the version tried when it failed)
    std::string cipher;    // "ECDHE-ECDSA-AES128-GCM-SHA256", or "(NONE)" when nothing was negotiated
    long bytes_read = -1;
    long bytes_written = -1;
    int alert = -1;  // the alert the server sent ("SSL alert number N": only for a received alert)

    bool negotiated() const { return exit_code == 0 && !cipher.empty() && cipher != "(NONE)"; }
    std::string describe() const {
        std::string s = "$";
        for (const auto& a : argv) s += " " + a;
        s += "\nexit: " + (exit_code ? std::to_string(*exit_code) : std::string("none (timed out)"));
        return s + "\n" + tail(output, 6000);
    }
};

void parse_probe(tls_probe& p) {
    std::smatch m;
    // "New, <the suite's own version>, Cipher is <suite>", then, in the SSL-Session block that
    // s_client prints for TLS 1.2 and below (for TLS 1.3 only once a ticket arrived), "Protocol  :
    // <version>"; a TLS 1.3 suite names its version itself.
    std::string suite_version;
    if (std::regex_search(p.output, m, std::regex(R"((?:New|Reused), (\S+), Cipher is (\S+))"))) {
        suite_version = m[1];
        p.cipher = m[2];
    }
    if (std::regex_search(p.output, m, std::regex(R"(\n\s*Protocol\s*: (\S+))"))) p.protocol = m[1];
    else if (suite_version == "TLSv1.3") p.protocol = suite_version;
    if (std::regex_search(p.output, m, std::regex(R"(SSL handshake has read (\d+) bytes and written (\d+) bytes)"))) {
        p.bytes_read = std::stol(m[1]);
        p.bytes_written = std::stol(m[2]);
    }
    if (std::regex_search(p.output, m, std::regex(R"(SSL alert number (\d+))"))) p.alert = std::stoi(m[1]);
}

std::vector<std::string> s_client_argv(int port, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port),
                                     "-servername", "localhost"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
}

// One handshake with stdin at EOF: s_client connects, prints the session and closes.
tls_probe s_client(int port, const std::vector<std::string>& args) {
    tls_probe p;
    p.argv = s_client_argv(port, args);
    run_result r = run(p.argv, {}, k_probe_timeout);
    p.exit_code = r.exit_code;
    p.output = r.out + "\n" + r.err;
    parse_probe(p);
    return p;
}

void check_negotiated(const tls_probe& p, const std::string& protocol, const std::string& cipher_pattern) {
    INFO(p.describe());
    CHECK(p.exit_code == 0);
    CHECK(p.protocol == protocol);
    CHECK(std::regex_match(p.cipher, std::regex(cipher_pattern)));
}

// Refused by the server: no session, the client sent its hello, and the server's alert is one of
// `alerts`.
void check_refused_by_server(const tls_probe& p, const std::vector<int>& alerts) {
    INFO(p.describe());
    CHECK(p.exit_code.has_value());
    CHECK(p.exit_code != 0);
    CHECK_FALSE(p.negotiated());
    CHECK(p.bytes_written > 0);  // a ClientHello went out: the client did not refuse by itself
    CHECK(std::find(alerts.begin(), alerts.end(), p.alert) != alerts.end());
}

// Reads from `fd` into `out` until `done(out)`, EOF or `timeout`.
enum class read_end { done, eof, timed_out };
read_end read_until(int fd, std::string& out, const std::function<bool(const std::string&)>& done, millis timeout) {
    const auto deadline = steady::now() + timeout;
    while (!done(out)) {
        const auto left = std::chrono::duration_cast<millis>(deadline - steady::now()).count();
        if (left <= 0) return read_end::timed_out;
        pollfd p{fd, POLLIN, 0};
        int n = ::poll(&p, 1, static_cast<int>(left));
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) return read_end::timed_out;
        char buf[4096];
        ssize_t got = n > 0 ? ::read(fd, buf, sizeof buf) : -1;
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return done(out) ? read_end::done : read_end::eof;  // s_client closed its stdout
        out.append(buf, static_cast<std::size_t>(got));
    }
    return read_end::done;
}

// `s_client -tls1_2 -msg`, then the line "R" on its stdin once the handshake is done: s_client
// sends a new ClientHello on the established connection (a client-initiated renegotiation).
struct renegotiation_probe {
    std::string output;
    bool first_handshake = false;  // the session was established before "R" was sent
    bool client_ended = false;     // s_client exited by itself after "R" (it learnt of a refusal)
    std::optional<int> exit_code;
    std::size_t client_hellos = 0;  // ">>> … ClientHello" lines: 2 when the renegotiation was tried
    std::size_t server_hellos = 0;  // "<<< … ServerHello" lines: 2 when the server renegotiated
    std::string describe() const {
        return "first handshake: " + std::string(first_handshake ? "yes" : "no") + ", ClientHellos sent: " +
               std::to_string(client_hellos) + ", ServerHellos received: " + std::to_string(server_hellos) +
               ", s_client " + (client_ended ? "exited " + std::to_string(exit_code.value_or(-1)) : "still running") +
               "\n" + tail(output, 6000);
    }
};

std::size_t count_lines(const std::string& text, const std::regex& line) {
    return static_cast<std::size_t>(std::distance(std::sregex_iterator(text.begin(), text.end(), line),
                                                  std::sregex_iterator()));
}

renegotiation_probe try_renegotiation(const temp_dir& dir, int port) {
    static const std::regex client_hello(R"(>>> [^\n]*Handshake \[length [0-9a-fA-F]+\], ClientHello\n)");
    static const std::regex server_hello(R"(<<< [^\n]*Handshake \[length [0-9a-fA-F]+\], ServerHello\n)");
    // The session block s_client prints after a handshake ends with "---".
    static const std::regex session_printed(R"(SSL-Session:[\s\S]*\n---\n)");
    renegotiation_probe p;
    auto [mine, theirs] = socket_pair();  // s_client's stdin and stdout
    process client("s_client-renegotiation", s_client_argv(port, {"-tls1_2", "-msg"}), dir.path(), {}, theirs.get());
    theirs.reset();
    p.first_handshake = read_until(mine.get(), p.output,
                                   [](const std::string& o) { return std::regex_search(o, session_printed); },
                                   k_probe_timeout) == read_end::done;
    if (p.first_handshake) {
        const char line[] = "R\n";
        CHECK(::write(mine.get(), line, 2) == 2);
        // Until s_client ends (a refusal ends the connection) or a second ServerHello arrives
        // (the server renegotiated).
        read_end end = read_until(mine.get(), p.output,
                                  [](const std::string& o) { return count_lines(o, server_hello) >= 2; }, 5s);
        if (end == read_end::eof) {
            p.exit_code = client.wait_exit(k_probe_timeout);
            p.client_ended = p.exit_code.has_value();
        }
    }
    ::shutdown(mine.get(), SHUT_WR);  // stdin at EOF: s_client closes and exits
    if (!client.wait_exit(k_probe_timeout)) {
        client.kill(SIGKILL);
        client.wait_exit(k_probe_timeout);
    }
    p.output += "\n--- stderr ---\n" + client.stderr_text();
    p.client_hellos = count_lines(p.output, client_hello);
    p.server_hellos = count_lines(p.output, server_hello);
    return p;
}

// An RSA key and certificate for localhost, made once for the whole run (RSA keys take a while):
// shared by the control server and the relays with an RSA certificate.
const cert_files& rsa_cert() {
    static temp_dir dir;
    static const cert_files files = [] {
        cert_files f{dir / "rsa.pem", dir / "rsa.key"};
        openssl_ok({"req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f.key.string(), "-out",
                    f.cert.string(), "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"});
        return f;
    }();
    return files;
}

// A permissive `openssl s_server` with an RSA and an ECDSA certificate: TLS 1.0 to 1.3, every
// suite (security level 0), client-initiated renegotiation allowed. Its stdin stays open (at EOF
// s_server would stop).
class permissive_server {
public:
    explicit permissive_server(const temp_dir& dir) : port_(free_port()) {
        const cert_files& rsa = rsa_cert();
        cert_files ec = make_self_signed(dir.path(), "control-ec", "localhost");
        auto [mine, theirs] = socket_pair();
        stdin_ = std::move(mine);
        server_ = std::make_unique<process>(
            "s_server", std::vector<std::string>{"openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(port_),
                                                 "-cert", rsa.cert.string(), "-key", rsa.key.string(),
                                                 "-dcert", ec.cert.string(), "-dkey", ec.key.string(),
                                                 "-cipher", "ALL:@SECLEVEL=0", "-client_renegotiation", "-quiet"},
            dir.path(), env_list{}, theirs.get());
        bool up = wait_until([&] { return !server_->running() || port_listening(port_); }, k_start_timeout);
        INFO(server_->describe());
        REQUIRE(up);
        REQUIRE(server_->running());
    }
    int port() const { return port_; }

private:
    int port_;
    unique_fd stdin_;
    std::unique_ptr<process> server_;
};

// A relay with an RSA certificate (--cert/--key). relay_fixture waits for the embedded CA's
// ca.pem, which a relay with its own certificate does not write.
class rsa_relay {
public:
    rsa_relay() : port_(free_port()) {
        const cert_files& rsa = rsa_cert();
        relay_ = std::make_unique<process>(
            "relay-rsa",
            std::vector<std::string>{bin::relay, "--data-dir", (dir_ / "sg").string(), "--listen",
                                     "127.0.0.1:" + std::to_string(port_), "--admin-listen", "off", "--cert",
                                     rsa.cert.string(), "--key", rsa.key.string()},
            dir_.path());
        bool up = wait_until([&] { return !relay_->running() || port_listening_in(relay_->pid(), port_); },
                             k_start_timeout);
        INFO(relay_->describe());
        REQUIRE(relay_->running());
        REQUIRE(up);
    }
    int port() const { return port_; }

private:
    temp_dir dir_;
    int port_;
    std::unique_ptr<process> relay_;
};

const std::vector<std::string> k_seclevel0 = {"-cipher", "DEFAULT@SECLEVEL=0"};
// TLS 1.2 suites with ECDHE but CBC + HMAC instead of an AEAD, for either key type.
const std::string k_cbc_suites = "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA";
const std::vector<int> k_protocol_version = {70};
const std::vector<int> k_no_suite = {40, 71};  // handshake_failure; insufficient_security

}  // namespace

TEST_CASE("tls policy: TLS 1.0 and 1.1 are refused by the relay with a protocol_version alert",
          "[integration][tls]") {
    temp_dir dir;
    permissive_server control(dir);
    relay_fixture relay;
    for (const std::string version : {"-tls1", "-tls1_1"}) {
        DYNAMIC_SECTION("s_client " << version << " -cipher DEFAULT@SECLEVEL=0") {
            std::vector<std::string> args = {version};
            args.insert(args.end(), k_seclevel0.begin(), k_seclevel0.end());
            tls_probe c = s_client(control.port(), args);
            check_negotiated(c, version == "-tls1" ? "TLSv1" : "TLSv1.1", ".+");
            check_refused_by_server(s_client(relay.port(), args), k_protocol_version);
        }
    }
}

TEST_CASE("tls policy: TLS 1.2 suites without an AEAD are refused", "[integration][tls]") {
    temp_dir dir;
    permissive_server control(dir);
    const std::vector<std::string> args = {"-tls1_2", "-cipher", k_cbc_suites + ":@SECLEVEL=0"};
    check_negotiated(s_client(control.port(), args), "TLSv1.2", "ECDHE-(ECDSA|RSA)-AES128-SHA(256)?");
    SECTION("the relay's own ECDSA certificate") {
        relay_fixture relay;
        check_refused_by_server(s_client(relay.port(), args), k_no_suite);
    }
    SECTION("an RSA certificate (--cert/--key)") {
        rsa_relay relay;
        check_refused_by_server(s_client(relay.port(), args), k_no_suite);
    }
}

TEST_CASE("tls policy: TLS 1.2 suites without ECDHE (static RSA, DHE) are refused", "[integration][tls]") {
    temp_dir dir;
    permissive_server control(dir);
    for (const std::string suite : {"AES128-GCM-SHA256", "DHE-RSA-AES128-GCM-SHA256"}) {
        DYNAMIC_SECTION("s_client -tls1_2 -cipher " << suite) {
            const std::vector<std::string> args = {"-tls1_2", "-cipher", suite};
            check_negotiated(s_client(control.port(), args), "TLSv1.2", suite);
            // With an RSA key the relay could serve these suites: only its policy refuses them.
            rsa_relay rsa;
            check_refused_by_server(s_client(rsa.port(), args), k_no_suite);
            relay_fixture relay;
            check_refused_by_server(s_client(relay.port(), args), k_no_suite);
        }
    }
}

TEST_CASE("tls policy: client-initiated renegotiation is refused", "[integration][tls]") {
    temp_dir dir;
    SECTION("the probe sees a renegotiation that a server allows (openssl s_server -client_renegotiation)") {
        permissive_server control(dir);
        renegotiation_probe p = try_renegotiation(dir, control.port());
        INFO(p.describe());
        REQUIRE(p.first_handshake);
        CHECK(p.client_hellos == 2);
        CHECK(p.server_hellos == 2);
    }
    SECTION("the relay") {
        relay_fixture relay;
        renegotiation_probe p = try_renegotiation(dir, relay.port());
        INFO(p.describe());
        REQUIRE(p.first_handshake);
        CHECK(p.client_hellos == 2);  // "R" made s_client try
        CHECK(p.server_hellos == 1);  // and the relay did not run a second handshake
        CHECK(p.client_ended);        // the refusal reached the client (an alert or the connection closed)
        CHECK(p.exit_code != 0);
    }
}

TEST_CASE("tls policy: TLS 1.2 with ECDHE + AES-GCM and TLS 1.3 are accepted", "[integration][tls]") {
    temp_dir dir;
    const std::vector<std::string> verify = {"-verify_return_error", "-verify_hostname", "localhost"};
    SECTION("the relay's own certificate, verified against its CA") {
        relay_fixture relay;
        std::vector<std::string> args = {"-CAfile", relay.ca_file().string()};
        args.insert(args.end(), verify.begin(), verify.end());
        std::vector<std::string> tls12 = args;
        tls12.insert(tls12.end(), {"-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"});
        check_negotiated(s_client(relay.port(), tls12), "TLSv1.2", "ECDHE-(ECDSA|RSA)-AES128-GCM-SHA256");
        std::vector<std::string> tls13 = args;
        tls13.push_back("-tls1_3");
        check_negotiated(s_client(relay.port(), tls13), "TLSv1.3", "TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)");
        // The client setting the refusals use (security level 0) is not what makes them fail.
        std::vector<std::string> level0 = {"-tls1_2"};
        level0.insert(level0.end(), k_seclevel0.begin(), k_seclevel0.end());
        check_negotiated(s_client(relay.port(), level0), "TLSv1.2", "ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)");
    }
    SECTION("an RSA certificate (--cert/--key)") {
        rsa_relay relay;
        check_negotiated(s_client(relay.port(), {"-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"}), "TLSv1.2",
                         "ECDHE-RSA-AES128-GCM-SHA256");
        check_negotiated(s_client(relay.port(), {"-tls1_3"}), "TLSv1.3", "TLS_.+");
    }
}
