#pragma once
// The command-line plumbing every Streamgate binary shares: TOML config files (--config, read
// with toml++ through CLI11), --print-config with secrets masked, --log-format and --version.
//
// Precedence, highest first: command line > environment variable > config file > default.
// CLI11 2.1.2 applies the file before the environment (and the environment only to options still
// unset), so the file reader drops every key whose option has its environment variable set.
// A config key is the option's long name without the dashes (`max-streams = 100`), a positional's
// name (`connection-string = "..."`), a repeatable option takes an array (`service = ["a", "b"]`).
#include <iosfwd>
#include <string>
#include <string_view>

namespace CLI { class App; }

namespace sg::cli {

// Adds --config FILE, --print-config, --log-format text|json (env STREAMGATE_LOG_FORMAT, applied
// to every logger) and --version to `app`, and installs the TOML reader: unknown keys and syntax
// errors are errors naming file and line.
void add_common_options(CLI::App& app, const std::string& version_line);

// Gives every option of `app` (not of its subcommands) that has no environment variable yet the
// variable STREAMGATE_<NAME> (`--max-streams` -> STREAMGATE_MAX_STREAMS). Call after the last
// add_option, before parse.
void add_default_env_names(CLI::App& app);

// Parses the command line (and config file). Returns -1 when the program goes on, otherwise the
// exit code it must return now: 0 after --help/--version, 2 for usage or config errors (the
// message is written to `err`).
int parse(CLI::App& app, int argc, const char* const* argv, std::ostream& out, std::ostream& err);
int parse(CLI::App& app, int argc, char** argv);

// --print-config was given.
bool print_config_requested(const CLI::App& app);

// The effective settings of `app` as a TOML document that --config reads back, one commented key
// per option in the order of --help, secrets masked. Unset options are commented out.
std::string effective_config(const CLI::App& app);

// Masks secrets inside any text: the value of SharedAccessKey=/SharedAccessSignature= (connection
// strings), sig= (SAS tokens), the password of URL user info (scheme://user:***@host), Bearer and
// Basic credentials.
std::string mask_secrets(std::string_view text);
// Option names that hold a secret as a whole (password, secret, token, credential, api-key,
// connection-string, ...; not `key`, which names a key file).
bool is_secret_option(std::string_view option_name);
// What --print-config shows for `value` of option `option_name`: mask_secrets(value), and "***"
// for a secret option whose value has no recognisable secret part.
std::string masked_value(std::string_view option_name, std::string_view value);

} // namespace sg::cli
