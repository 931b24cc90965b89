#include "common/config.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <regex>
#include <sstream>
#include <toml++/toml.h>
#include "common/log.hpp"

namespace sg::cli {
namespace {

// The config key of an option: its first long name, or a positional's name; "" for options
// that only have a short name.
std::string option_key(const CLI::Option& option)
{
    if (!option.get_lnames().empty())
        return option.get_lnames().front();
    if (option.get_positional())
        return option.get_single_name();
    return {};
}

bool is_flag(const CLI::Option& option) { return option.get_expected_max() == 0; }

bool is_repeatable(const CLI::Option& option) { return option.get_items_expected_max() > 1; }

const CLI::Option* find_option(const CLI::App& app, std::string_view key)
{
    for (const CLI::Option* option : app.get_options()) {
        const auto& long_names = option->get_lnames();
        if (std::find(long_names.begin(), long_names.end(), key) != long_names.end())
            return option;
        if (option->get_positional() && option->get_single_name() == key)
            return option;
    }
    return nullptr;
}

bool environment_sets(const CLI::Option& option)
{
    const std::string name = option.get_envname();
    if (name.empty())
        return false;
    const char* value = std::getenv(name.c_str());
    return value != nullptr && *value != '\0';
}

// The shortest text that reads back as the same double (what a command line would carry).
std::string number_text(double value)
{
    char text[64];
    auto result = std::to_chars(text, text + sizeof text, value);
    return std::string(text, result.ptr);
}

std::optional<std::string> scalar_text(const toml::node& node)
{
    if (const auto* s = node.as_string())
        return s->get();
    if (const auto* i = node.as_integer())
        return std::to_string(i->get());
    if (const auto* f = node.as_floating_point())
        return number_text(f->get());
    if (const auto* b = node.as_boolean())
        return b->get() ? "true" : "false";
    return std::nullopt;
}

// Reads --config files with toml++ and hands CLI11 one item per key; CLI11 then applies each
// item to an option that the command line left unset.
class toml_reader final : public CLI::Config {
public:
    explicit toml_reader(const CLI::App& app) : app_(app) {}

    std::string to_config(const CLI::App* app, bool, bool, std::string) const override
    {
        return effective_config(*app);
    }

    std::vector<CLI::ConfigItem> from_config(std::istream& input) const override
    {
        const std::string source = source_name();
        toml::table table;
        try {
            table = toml::parse(input, source);
        } catch (const toml::parse_error& e) {
            std::ostringstream message;
            message << source << ":" << e.source().begin.line << ":" << e.source().begin.column
                    << ": TOML syntax error: " << e.description();
            throw CLI::ConfigError(message.str());
        }
        std::vector<CLI::ConfigItem> items;
        for (auto&& entry : table) {
            const std::string key(entry.first.str());
            const toml::node& value = entry.second;
            const auto fail = [&](const std::string& what) {
                throw CLI::ConfigError(source + ":" + std::to_string(entry.first.source().begin.line) + ": " + what);
            };
            const CLI::Option* option = find_option(app_, key);
            if (value.is_table() || (option == nullptr && value.is_array_of_tables()))
                fail("unknown section [" + key + "]: settings are top-level keys named like the options");
            if (option == nullptr)
                fail("unknown key '" + key + "' (not an option of " + app_.get_name() + "; see --help)");
            if (!option->get_configurable())
                fail("'" + key + "' cannot be set in a config file");
            if (environment_sets(*option))
                continue; // the environment variable wins over the file
            CLI::ConfigItem item;
            item.name = key;
            if (const auto* array = value.as_array()) {
                if (is_flag(*option) || !is_repeatable(*option))
                    fail("'" + key + "' takes one value, not an array");
                for (const toml::node& element : *array) {
                    auto text = scalar_text(element);
                    if (!text)
                        fail("'" + key + "' must be an array of strings or numbers");
                    item.inputs.push_back(*text);
                }
                if (item.inputs.empty())
                    continue; // an empty array keeps the default
            } else {
                auto text = scalar_text(value);
                if (!text)
                    fail("'" + key + "' must be a string, a number or a boolean");
                if (is_flag(*option) && !value.is_boolean())
                    fail("'" + key + "' is a switch: true or false");
                item.inputs.push_back(*text);
            }
            items.push_back(std::move(item));
        }
        return items;
    }

private:
    std::string source_name() const
    {
        const CLI::Option* config = app_.get_config_ptr();
        if (config != nullptr && !config->results().empty())
            return config->results().back();
        return "config";
    }

    const CLI::App& app_;
};

std::string toml_string(std::string_view s)
{
    std::string out = "\"";
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20 || c == 0x7F) {
            char escaped[8];
            std::snprintf(escaped, sizeof escaped, "\\u%04X", c);
            out += escaped;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

// A number option whose text is a TOML number stays bare; everything else is a string, which
// CLI11 converts back just as well.
std::string toml_value(const CLI::Option& option, const std::string& key, const std::string& value)
{
    static const std::regex number(R"(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)");
    const std::string type = option.get_type_name();
    const bool numeric = type == "INT" || type == "UINT" || type == "FLOAT" || type == "NUMBER";
    if (numeric && std::regex_match(value, number))
        return value;
    return toml_string(masked_value(key, value));
}

std::string lower(std::string_view s)
{
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
    return out;
}

} // namespace

void add_common_options(CLI::App& app, const std::string& version_line)
{
    app.config_formatter(std::make_shared<toml_reader>(app));
    app.allow_config_extras(CLI::config_extras_mode::error);
    app.set_config("--config", "",
                   "Read settings from this TOML file: each key is a long option name without the dashes "
                   "(max-streams = 100), repeatable options take arrays. Command line and environment win over "
                   "the file. See docs/CONFIGURATION.md")
        ->type_name("FILE");
    app.add_flag("--print-config")
        ->description("Print the effective settings (command line, environment, file, defaults) as TOML that --config "
                 "reads back, secrets masked, then exit 0")
        ->configurable(false);
    app.add_option_function<std::string>(
           "--log-format",
           [](const std::string& name) {
               if (auto format = sg::parse_log_format(name))
                   sg::set_log_format(*format);
           },
           "Log lines on stderr: text (for a terminal) or json (one object per line: time, level, component, "
           "message)")
        ->check(CLI::IsMember({"text", "json"}))
        ->default_str("text")
        ->envname("STREAMGATE_LOG_FORMAT");
    app.set_version_flag("--version", version_line, "Print the version and exit 0")->configurable(false);
    if (auto* help = app.get_help_ptr())
        help->configurable(false);
}

void add_default_env_names(CLI::App& app)
{
    for (CLI::Option* option : app.get_options()) {
        if (!option->get_configurable() || !option->get_envname().empty())
            continue;
        std::string name = option_key(*option);
        if (name.empty())
            continue;
        std::string env = "STREAMGATE_";
        for (char c : name)
            env += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        option->envname(env);
    }
}

int parse(CLI::App& app, int argc, const char* const* argv, std::ostream& out, std::ostream& err)
{
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0)
            return app.exit(e, out, err); // --help, --version
        err << "error: " << e.what() << "\nRun with --help for more information.\n";
        return 2;
    }
    return -1;
}

int parse(CLI::App& app, int argc, char** argv) { return parse(app, argc, argv, std::cout, std::cerr); }

bool print_config_requested(const CLI::App& app)
{
    const CLI::Option* option = app.get_option_no_throw("--print-config");
    return option != nullptr && option->count() > 0;
}

std::string effective_config(const CLI::App& app)
{
    std::ostringstream out;
    out << "# Effective settings of " << app.get_name()
        << " (--print-config): command line > environment > config file > default.\n"
        << "# Secrets are masked (***): put the real values back before using this file.\n";
    for (const CLI::Option* option : app.get_options()) {
        const std::string key = option_key(*option);
        if (key.empty() || !option->get_configurable())
            continue;
        out << "\n";
        std::istringstream description(option->get_description());
        for (std::string line; std::getline(description, line);)
            out << "# " << line << "\n";
        if (!option->get_envname().empty())
            out << "# env " << option->get_envname() << "\n";
        if (is_flag(*option)) {
            const bool on = option->count() > 0 && option->as<bool>();
            out << key << " = " << (on ? "true" : "false") << "\n";
        } else if (is_repeatable(*option)) {
            out << key << " = [";
            const auto& values = option->results();
            for (std::size_t i = 0; i < values.size(); ++i)
                out << (i ? ", " : "") << toml_value(*option, key, values[i]);
            out << "]\n";
        } else if (option->count() > 0) {
            out << key << " = " << toml_value(*option, key, option->results().back()) << "\n";
        } else if (!option->get_default_str().empty()) {
            out << key << " = " << toml_value(*option, key, option->get_default_str()) << "\n";
        } else {
            out << "# " << key << " = (not set)\n";
        }
    }
    return out.str();
}

std::string mask_secrets(std::string_view text)
{
    struct rule {
        std::regex pattern;
        const char* replacement;
    };
    static const std::vector<rule> rules = [] {
        const auto icase = std::regex::ECMAScript | std::regex::icase;
        std::vector<rule> r;
        r.push_back({std::regex(R"((SharedAccessKey\s*=\s*)[^;]+)", icase), "$1***"});
        r.push_back({std::regex(R"((SharedAccessSignature\s*=\s*)[^;]+)", icase), "$1***"});
        r.push_back({std::regex(R"(([?&\s]sig=|^sig=)[^&;\s]+)", icase), "$1***"});
        r.push_back({std::regex(R"(((password|passwd|pwd|secret|token)\s*=\s*)[^;&\s]+)", icase), "$1***"});
        r.push_back({std::regex(R"(([a-z][a-z0-9+.-]*://[^/@:\s]*:)[^@/\s]+@)", icase), "$1***@"});
        r.push_back({std::regex(R"(((Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+)", icase), "$1***"});
        return r;
    }();
    std::string masked(text);
    for (const auto& r : rules)
        masked = std::regex_replace(masked, r.pattern, r.replacement);
    return masked;
}

bool is_secret_option(std::string_view option_name)
{
    static const char* const secret_words[] = {"password",  "passwd",         "passphrase",        "secret",
                                               "token",     "credential",     "api-key",           "apikey",
                                               "auth-key",  "connection-string", "shared-access-key", "sas-key"};
    const std::string name = lower(option_name);
    return std::any_of(std::begin(secret_words), std::end(secret_words),
                       [&](const char* word) { return name.find(word) != std::string::npos; });
}

std::string masked_value(std::string_view option_name, std::string_view value)
{
    std::string masked = mask_secrets(value);
    if (is_secret_option(option_name) && masked == value && !value.empty() && value.find("***") == std::string_view::npos)
        return "***";
    return masked;
}

} // namespace sg::cli
