// RDP through a tunnel to a real xrdp (Debian's xrdp 0.9.21) that the test starts without systemd:
// relay + device proxy (--service rdp=127.0.0.1:PORT) + service proxy (--stream-name rdp).
//   - always: the RDP connection request a client sends first (TPKT + X.224 Connection Request
//     with RDP_NEG_REQ asking for TLS) is answered by xrdp's Connection Confirm with RDP_NEG_RSP,
//     then a TLS handshake with xrdp completes over the same tunnelled socket;
//   - when xfreerdp and xvfb-run are installed: `xfreerdp +auth-only` through the tunnel.
#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <fstream>
#include <map>
#include <sstream>

#include "harness.hpp"

using namespace sgit;

namespace {

bool on_path(const std::string& program) {
    const char* path = std::getenv("PATH");
    std::stringstream dirs(path ? path : "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
    std::string dir;
    while (std::getline(dirs, dir, ':'))
        if (::access((dir + "/" + program).c_str(), X_OK) == 0) return true;
    return ::access(("/usr/sbin/" + program).c_str(), X_OK) == 0;
}

void write_text(const std::filesystem::path& p, const std::string& text) {
    write_file(p, std::span(reinterpret_cast<const unsigned char*>(text.data()), text.size()));
}

// A copy of an ini file with some keys of some sections replaced ({section, key} -> value).
std::string rewrite_ini(const std::filesystem::path& source,
                        const std::map<std::pair<std::string, std::string>, std::string>& values) {
    std::ifstream in(source);
    INFO("reading " << source << " (installed by the xrdp package)");
    REQUIRE(in);
    std::string line, section, out;
    while (std::getline(in, line)) {
        if (!line.empty() && line.front() == '[') section = line.substr(1, line.find(']') - 1);
        auto eq = line.find('=');
        if (eq != std::string::npos && line.front() != ';' && line.front() != '#') {
            auto it = values.find({section, line.substr(0, eq)});
            if (it != values.end()) line = line.substr(0, eq + 1) + it->second;
        }
        out += line + "\n";
    }
    return out;
}

// [Globals] ListenPort of the installed sesman.ini: xrdp always reads the sesman port from
// /etc/xrdp/sesman.ini, whatever ini it was started with.
int installed_sesman_port() {
    std::ifstream in("/etc/xrdp/sesman.ini");
    std::string line, section;
    while (std::getline(in, line)) {
        if (!line.empty() && line.front() == '[') section = line.substr(1, line.find(']') - 1);
        if (section == "Globals" && line.rfind("ListenPort=", 0) == 0) return std::atoi(line.c_str() + 11);
    }
    return 3350;
}

// xrdp (and, when its fixed port is free, xrdp-sesman) in the foreground with private copies of
// the ini files, a fresh self-signed certificate and logs in a temporary directory.
class xrdp_fixture {
public:
    xrdp_fixture() : port_(free_port()) {
        INFO("xrdp and xrdp-sesman come from scripts/install-deps.sh (package xrdp)");
        REQUIRE(on_path("xrdp"));
        // Where systemd's unit would create it: xrdp puts its session sockets there.
        std::error_code ec;
        std::filesystem::create_directories("/run/xrdp/sockdir", ec);
        ::chmod("/run/xrdp/sockdir", 03777);
        struct stat st{};
        INFO("/run/xrdp/sockdir must exist with mode 3777 (run the tests as root, or create it)");
        REQUIRE(::stat("/run/xrdp/sockdir", &st) == 0);

        const std::vector<std::string> openssl = {"openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                                  "-keyout", (dir_ / "key.pem").string(), "-out", cert().string(),
                                                  "-days", "2", "-subj", "/CN=streamgate-rdp-test"};
        run_result made = run(openssl);
        INFO(describe(openssl, made));
        REQUIRE(made.exit_code == 0);

        write_text(dir_ / "xrdp.ini",
                   rewrite_ini("/etc/xrdp/xrdp.ini",
                               {{{"Globals", "port"}, "tcp://127.0.0.1:" + std::to_string(port_)},
                                {{"Globals", "fork"}, "false"},
                                {{"Globals", "certificate"}, cert().string()},
                                {{"Globals", "key_file"}, (dir_ / "key.pem").string()},
                                {{"Logging", "LogFile"}, xrdp_log_path().string()},
                                {{"Logging", "EnableSyslog"}, "false"}}));
        sesman_port_ = installed_sesman_port();
        if (on_path("xrdp-sesman") && !port_listening(sesman_port_)) {
            write_text(dir_ / "sesman.ini",
                       rewrite_ini("/etc/xrdp/sesman.ini",
                                   {{{"Globals", "ListenAddress"}, "127.0.0.1"},
                                    {{"Logging", "LogFile"}, sesman_log_path().string()},
                                    {{"Logging", "EnableSyslog"}, "false"}}));
            sesman_ = std::make_unique<process>(
                "xrdp-sesman", std::vector<std::string>{"xrdp-sesman", "-n", "-c", (dir_ / "sesman.ini").string()},
                dir_.path());
            bool up = wait_until([&] { return !sesman_->running() || port_listening(sesman_port_); }, k_start_timeout);
            INFO(sesman_->describe());
            REQUIRE(up);
            REQUIRE(sesman_->running());
        } else {
            WARN("xrdp-sesman not started: port " << sesman_port_ << " is taken; the credentials check is skipped");
        }
        xrdp_ = std::make_unique<process>(
            "xrdp", std::vector<std::string>{"xrdp", "-n", "-c", (dir_ / "xrdp.ini").string()}, dir_.path());
        bool up = wait_until([&] { return !xrdp_->running() || port_listening(port_); }, k_start_timeout);
        INFO(xrdp_->describe());
        INFO(xrdp_log());
        REQUIRE(up);
        REQUIRE(xrdp_->running());
    }

    int port() const { return port_; }
    bool sesman_running() { return sesman_ && sesman_->running(); }
    std::filesystem::path cert() const { return dir_ / "cert.pem"; }
    std::filesystem::path xrdp_log_path() const { return dir_ / "xrdp.log"; }
    std::filesystem::path sesman_log_path() const { return dir_ / "sesman.log"; }
    std::string xrdp_log() const { return std::filesystem::exists(xrdp_log_path()) ? read_file(xrdp_log_path()) : ""; }
    std::string sesman_log() const {
        return std::filesystem::exists(sesman_log_path()) ? read_file(sesman_log_path()) : "";
    }
    const temp_dir& dir() const { return dir_; }

private:
    temp_dir dir_;
    int port_;
    int sesman_port_ = 0;
    std::unique_ptr<process> sesman_;
    std::unique_ptr<process> xrdp_;
};

void send_all(int fd, const bytes& data) {
    std::size_t sent = 0;
    while (sent < data.size()) {
        ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        REQUIRE(n > 0);
        sent += static_cast<std::size_t>(n);
    }
}

bytes receive_exactly(int fd, std::size_t size) {
    bytes out(size);
    std::size_t got = 0;
    while (got < size) {
        ssize_t n = ::recv(fd, out.data() + got, size - got, 0);
        INFO("received " << got << " of " << size << " bytes");
        REQUIRE(n > 0);  // the socket has a receive timeout: a silent server fails here
        got += static_cast<std::size_t>(n);
    }
    return out;
}

// [MS-RDPBCGR] 2.2.1.1: TPKT header, X.224 Connection Request (code 0xE0) with a routing cookie
// and RDP_NEG_REQ (type 1) asking for PROTOCOL_SSL (1).
bytes x224_connection_request() {
    // TPKT: version 3, reserved, length (below); X.224: LI (below), CR code, DST-REF, SRC-REF, class 0.
    bytes out = {0x03, 0x00, 0x00, 0x00, 0x00, 0xE0, 0x00, 0x00, 0x00, 0x00, 0x00};
    for (char c : std::string("Cookie: mstshash=streamgate\r\n")) out.push_back(static_cast<unsigned char>(c));
    for (unsigned char b : {0x01, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00}) out.push_back(b);  // RDP_NEG_REQ
    out[2] = static_cast<unsigned char>(out.size() >> 8);
    out[3] = static_cast<unsigned char>(out.size() & 0xff);
    out[4] = static_cast<unsigned char>(out.size() - 5);  // the X.224 header after its LI byte
    return out;
}

std::string openssl_errors() {
    std::string out;
    while (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        out += std::string(buf) + "; ";
    }
    return out;
}

// DER of a certificate, to compare what the TLS peer presented with the file xrdp was given.
bytes der_of(X509* cert) {
    int n = i2d_X509(cert, nullptr);
    REQUIRE(n > 0);
    bytes out(static_cast<std::size_t>(n));
    unsigned char* p = out.data();
    i2d_X509(cert, &p);
    return out;
}

bytes der_of_file(const std::filesystem::path& pem) {
    FILE* f = std::fopen(pem.c_str(), "r");
    REQUIRE(f != nullptr);
    X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    REQUIRE(cert != nullptr);
    bytes out = der_of(cert);
    X509_free(cert);
    return out;
}

}  // namespace

TEST_CASE("rdp: X.224 connection request/confirm and a TLS handshake with a real xrdp through the tunnel, "
          "xfreerdp +auth-only when installed",
          "[integration][rdp]") {
    xrdp_fixture xrdp;
    tunnel_fixture tunnel({.target_port = xrdp.port(),
                           .device_proxy_args = {"--service", "rdp=127.0.0.1:" + std::to_string(xrdp.port())},
                           .service_proxy_args = {"--stream-name", "rdp"}});

    SECTION("X.224 Connection Confirm with RDP_NEG_RSP, then TLS with xrdp's certificate") {
        unique_fd sock = connect_tcp(tunnel.local_port);
        const timeval timeout{10, 0};
        ::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        ::setsockopt(sock.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);

        send_all(sock.get(), x224_connection_request());
        const bytes tpkt = receive_exactly(sock.get(), 4);
        REQUIRE(tpkt[0] == 0x03);  // TPKT version 3
        const std::size_t length = (std::size_t{tpkt[2]} << 8) | tpkt[3];
        REQUIRE(length == 19);  // TPKT 4 + X.224 CC 7 + RDP_NEG_RSP 8
        const bytes cc = receive_exactly(sock.get(), length - 4);
        CHECK(cc[0] == 14);    // length indicator
        CHECK(cc[1] == 0xD0);  // X.224 Connection Confirm
        // RDP_NEG_RSP: type 2, length 8, selectedProtocol PROTOCOL_SSL (1).
        CHECK(cc[7] == 0x02);
        CHECK(cc[9] == 0x08);
        CHECK(cc[10] == 0x00);
        CHECK((cc[11] | cc[12] << 8 | cc[13] << 16 | cc[14] << 24) == 1);

        SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
        REQUIRE(ctx != nullptr);
        SSL* ssl = SSL_new(ctx);
        SSL_set_fd(ssl, sock.get());
        SSL_set_verify(ssl, SSL_VERIFY_NONE, nullptr);  // self-signed; compared with the file below
        const int handshake = SSL_connect(ssl);
        INFO("SSL_connect: " << handshake << " " << openssl_errors());
        INFO(xrdp.xrdp_log());
        CHECK(handshake == 1);
        if (handshake == 1) {
            X509* presented = SSL_get1_peer_certificate(ssl);
            REQUIRE(presented != nullptr);
            CHECK(der_of(presented) == der_of_file(xrdp.cert()));  // it is this xrdp at the other end
            X509_free(presented);
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
        SSL_CTX_free(ctx);
        // xrdp logs "TLS connection established" only once the client goes on; the negotiation it logs at once.
        CHECK(wait_until([&] { return contains(xrdp.xrdp_log(), "selected [SSL]"); }, 5s));
    }

    SECTION("xfreerdp +auth-only completes X.224, TLS and MCS through the tunnel") {
        if (!on_path("xfreerdp") || !on_path("xvfb-run")) {
            WARN("xfreerdp (freerdp2-x11) or xvfb-run (xvfb) is not installed: skipped");
            return;
        }
        // xrdp 0.9.21 offers no NLA, so +auth-only exits 0 after the connection sequence (X.224,
        // TLS, MCS, capabilities) whatever the password: exit 0 proves the protocol went through,
        // not the credentials. Those go on to xrdp-sesman, which checks them with PAM; this user
        // does not exist, so sesman must log AUTHFAIL for it: the credentials crossed the tunnel.
        const std::string user = "sg-rdp-nobody";
        const std::vector<std::string> argv = {"xvfb-run", "-a", "xfreerdp",
                                               "/v:127.0.0.1:" + std::to_string(tunnel.local_port), "/u:" + user,
                                               "/p:not-the-password", "/cert:ignore", "+auth-only"};
        run_result r = run(argv, {{"HOME", xrdp.dir().path().string()}}, 40s);
        INFO(describe(argv, r));
        INFO(xrdp.xrdp_log());
        CHECK(r.exit_code == 0);
        CHECK(contains(r.out + r.err, "Authentication only, exit status 0"));
        const std::string log = xrdp.xrdp_log();
        CHECK(contains(log, "selected [SSL]"));
        CHECK(contains(log, "TLS connection established from 127.0.0.1"));
        CHECK(contains(log, "xrdp_caps_process"));  // the client's Confirm Active: past MCS
        if (xrdp.sesman_running()) {
            bool refused = wait_until([&] { return contains(xrdp.sesman_log(), "AUTHFAIL: user=" + user); }, 10s);
            INFO(xrdp.sesman_log());
            CHECK(refused);
        }
    }
    INFO(tunnel.device_proxy->describe());
    CHECK(contains(tunnel.device_proxy->stderr_text(), "stream=rdp"));
}
