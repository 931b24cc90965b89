// streamgate-web [options]                       the web terminal gateway
// streamgate-web add-user --users F --name N --devices GLOB [--devices GLOB...] [--admin]
#include <termios.h>
#include <unistd.h>
#include <CLI/CLI.hpp>
#include <iostream>
#include <openssl/crypto.h>
#include "common/config.hpp"
#include "common/log.hpp"
#include "web/gateway.hpp"
#include "web/users.hpp"
#include "streamgate/version.hpp"

namespace {

// From the terminal with echo off, or one line of stdin when it is not a terminal (scripts, tests).
std::string read_password(const char* prompt)
{
    std::string line;
    if (!::isatty(STDIN_FILENO)) {
        std::getline(std::cin, line);
        return line;
    }
    termios old{};
    ::tcgetattr(STDIN_FILENO, &old);
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    std::cerr << prompt << std::flush;
    ::tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
    std::getline(std::cin, line);
    ::tcsetattr(STDIN_FILENO, TCSANOW, &old);
    std::cerr << "\n";
    return line;
}

int add_user(const std::string& file, const std::string& name, const std::vector<std::string>& globs, bool admin)
{
    namespace web = sg::web;
    if (!web::is_valid_user_name(name))
        throw sg::config_error("--name: 1-64 letters, digits, '.', '_' or '-'");
    if (globs.empty())
        throw sg::config_error("--devices: at least one glob of device ids (e.g. 'lab-*', or '*' for all)");
    auto store = web::user_store::load(file);
    std::string password = read_password("password: ");
    if (::isatty(STDIN_FILENO)) {
        std::string again = read_password("password again: ");
        bool same = password == again;
        OPENSSL_cleanse(again.data(), again.size());
        if (!same)
            throw sg::config_error("the two passwords differ");
    }
    if (password.size() < 8)
        throw sg::config_error("the password must have at least 8 characters");
    web::user u{name, web::hash_password(password), globs, admin};
    OPENSSL_cleanse(password.data(), password.size());
    bool existed = store.find(name) != nullptr;
    store.put(std::move(u));
    store.save(file);
    std::cout << (existed ? "updated" : "added") << " user " << name << (admin ? " (admin)" : "") << " in " << file << "\n";
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    namespace web = sg::web;
    CLI::App app{"streamgate-web: a web terminal to devices. Users log in from a browser, pick a device they may "
                 "reach and get an SSH terminal to it through the Streamgate relay (the device runs "
                 "streamgate-device-proxy --service ssh=127.0.0.1:22). Sessions are audited and recorded.\n\n"
                 "Settings come from the command line, then environment variables (shown as Env), then --config "
                 "FILE (TOML), then the defaults shown.",
                 "streamgate-web"};
    web::options o;
    std::string users = o.users_file, recordings = o.recordings_dir, data_dir = o.data_dir;
    std::string connection, registry_connection, ca_file, tls_cert, tls_key;
    int idle = 900, connect_timeout = 30;
    app.add_option("--listen", o.listen, "Address and port for browsers (plain HTTP only on loopback unless "
                   "--allow-plain-http)")->capture_default_str();
    app.add_option("--users", users, "Users file (TOML), written by add-user")->capture_default_str();
    app.add_option("--recordings", recordings, "Directory of session recordings (.cast) and audit.jsonl")
        ->capture_default_str();
    app.add_option("--data-dir", data_dir, "Directory of the gateway's state: known_hosts (pinned SSH host keys)")
        ->capture_default_str();
    app.add_option("--connection-string", connection,
                   "Connection string of a policy with ServiceConnect (service, or iothubowner) (required)");
    app.add_option("--registry-connection-string", registry_connection,
                   "Connection string of a policy with RegistryRead for the device list (default: --connection-string, "
                   "which then needs RegistryRead too, e.g. iothubowner)");
    app.add_option("--ca-file", ca_file, "CA certificate(s) to verify the relay with (default: system store)");
    app.add_option("--tls-cert", tls_cert, "Certificate chain (PEM) for HTTPS");
    app.add_option("--tls-key", tls_key, "Private key (PEM) for HTTPS");
    app.add_flag("--allow-plain-http", o.allow_plain_http, "Serve plain HTTP on a non-loopback address");
    app.add_option("--stream-name", o.stream_name, "Stream name of the devices' SSH service")->capture_default_str();
    app.add_option("--idle-timeout", idle, "Seconds without activity before a web session is logged out")
        ->capture_default_str();
    app.add_option("--connect-timeout", connect_timeout, "Seconds for the stream, SSH handshake and login")
        ->capture_default_str();
    app.add_option("--login-failures-per-minute", o.login_failures_per_minute,
                   "Failed logins per user name and per client address before logins wait")->capture_default_str();
    app.add_option("--max-terminals", o.max_terminals, "Terminals open at once on this gateway")->capture_default_str();
    std::string xterm_lib = o.xterm_lib, xterm_css = o.xterm_css, xterm_fit = o.xterm_fit;
    app.add_option("--xterm-lib", xterm_lib, "xterm.js's CommonJS lib/ directory (Debian: node-xterm)")->capture_default_str();
    app.add_option("--xterm-css", xterm_css, "xterm.css (Debian: libjs-xterm)")->capture_default_str();
    app.add_option("--xterm-fit", xterm_fit, "xterm.js's fit addon (Debian: libjs-xterm)")->capture_default_str();
    app.add_flag("-v,--verbose", o.verbose, "Debug logging");

    auto* add = app.add_subcommand("add-user", "Add or update a user (asks the password twice on a terminal; reads "
                                               "one line of stdin otherwise)");
    std::string add_users = "users.toml", add_name;
    std::vector<std::string> add_globs;
    bool add_admin = false;
    add->add_option("--users", add_users, "Users file (TOML)")->capture_default_str();
    add->add_option("--name", add_name, "User name")->required();
    add->add_option("--devices", add_globs, "Glob(s) of device ids the user may reach, e.g. 'lab-*'")->required();
    add->add_flag("--admin", add_admin, "May list and replay every recording");

    sg::cli::add_common_options(app, std::string("streamgate-web ") + sg::version);
    sg::cli::add_default_env_names(app);
    if (int code = sg::cli::parse(app, argc, argv); code >= 0)
        return code;

    try {
        if (add->parsed())
            return add_user(add_users, add_name, add_globs, add_admin);
        if (connection.empty())
            throw sg::config_error("--connection-string is required (a policy with ServiceConnect)");
        o.service = sg::parse_connection_string(connection);
        if (o.service.is_device())
            throw sg::config_error("--connection-string: this is a device connection string; the gateway needs a "
                                   "service policy's");
        o.registry = registry_connection.empty() ? o.service : sg::parse_connection_string(registry_connection);
        o.users_file = users;
        o.recordings_dir = recordings;
        o.data_dir = data_dir;
        if (!ca_file.empty())
            o.ca_file = ca_file;
        if (!tls_cert.empty())
            o.tls_cert = tls_cert;
        if (!tls_key.empty())
            o.tls_key = tls_key;
        o.idle_timeout = std::chrono::seconds(std::max(1, idle));
        o.connect_timeout = std::chrono::seconds(std::clamp(connect_timeout, 1, 300));
        o.xterm_lib = xterm_lib;
        o.xterm_css = xterm_css;
        o.xterm_fit = xterm_fit;
        if (sg::cli::print_config_requested(app)) {
            std::cout << sg::cli::effective_config(app);
            return 0;
        }
        return web::run(o);
    } catch (const sg::config_error& e) {
        sg::report_error("web", e.what());
        return 2;
    } catch (const std::exception& e) {
        sg::report_error("web", e.what());
        return 1;
    }
}
