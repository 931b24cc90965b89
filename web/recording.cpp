#include "web/recording.hpp"

#include <sys/stat.h>
#include <boost/json.hpp>

namespace sg::web {

namespace json = boost::json;

cast_writer::cast_writer(const std::filesystem::path& dir, const session_info& info)
    : path_(dir / (info.id + ".cast")), start_(std::chrono::steady_clock::now())
{
    out_.open(path_, std::ios::trunc);
    ::chmod(path_.c_str(), 0600);
    json::object header{{"version", 2},
                        {"width", info.cols},
                        {"height", info.rows},
                        {"timestamp", std::chrono::duration_cast<std::chrono::seconds>(
                                          std::chrono::system_clock::now().time_since_epoch()).count()},
                        {"title", info.web_user + "@" + info.device_id + " as " + info.ssh_user},
                        {"env", json::object{{"TERM", "xterm-256color"}}},
                        {"streamgate", json::object{{"web_user", info.web_user},
                                                    {"device", info.device_id},
                                                    {"ssh_user", info.ssh_user},
                                                    {"auth", info.auth_method}}}};
    out_ << json::serialize(header) << "\n";
    out_.flush();
}

void cast_writer::event(const char* kind, std::string_view data)
{
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    // The terminal's bytes are not always valid UTF-8 at a chunk boundary: Boost.JSON escapes
    // what it can; invalid bytes become U+FFFD so every line stays valid JSON.
    std::string text;
    text.reserve(data.size());
    for (std::size_t i = 0; i < data.size();) {
        unsigned char c = data[i];
        std::size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len && i + len <= data.size();
        for (std::size_t k = 1; ok && k < len; ++k)
            ok = (static_cast<unsigned char>(data[i + k]) >> 6) == 2;
        if (ok) {
            text.append(data.substr(i, len));
            i += len;
        } else {
            text += "\xEF\xBF\xBD";
            ++i;
        }
    }
    json::array line{t, kind, json::string(text)};
    out_ << json::serialize(line) << "\n";
    out_.flush();
}

std::string audit_log::append(const audit_record& r)
{
    json::object o{{"session", r.info.id},         {"web_user", r.info.web_user}, {"device", r.info.device_id},
                   {"ssh_user", r.info.ssh_user},   {"auth", r.info.auth_method},  {"start", r.start_unix},
                   {"end", r.end_unix},             {"bytes_in", r.bytes_in},      {"bytes_out", r.bytes_out},
                   {"result", r.result},            {"host_key", r.host_key}};
    std::string line = json::serialize(o);
    std::lock_guard lock(mutex_);
    std::ofstream out(file_, std::ios::app);
    ::chmod(file_.c_str(), 0600);
    out << line << "\n";
    return line;
}

std::vector<std::string> audit_log::lines() const
{
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    std::ifstream in(file_);
    std::string line;
    while (std::getline(in, line))
        if (!line.empty())
            out.push_back(line);
    return out;
}

bool is_valid_recording_id(std::string_view id)
{
    if (id.empty() || id.size() > 64)
        return false;
    for (char c : id)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_'))
            return false;
    return true;
}

} // namespace sg::web
