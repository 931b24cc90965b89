#include "common/prometheus.hpp"

#include <cmath>
#include <charconv>

namespace sg::prometheus {

namespace {

void append_labels(std::string& out, std::initializer_list<label> labels, std::string_view extra_key = {},
                   std::string_view extra_value = {})
{
    if (labels.size() == 0 && extra_key.empty())
        return;
    out += '{';
    bool first = true;
    auto one = [&](std::string_view k, std::string_view v) {
        if (!first)
            out += ',';
        first = false;
        out += k;
        out += "=\"";
        for (char c : v) {
            if (c == '\\' || c == '"')
                out += '\\', out += c;
            else if (c == '\n')
                out += "\\n";
            else
                out += c;
        }
        out += '"';
    };
    for (const auto& [k, v] : labels)
        one(k, v);
    if (!extra_key.empty())
        one(extra_key, extra_value);
    out += '}';
}

std::string format_double(double v)
{
    if (std::isinf(v))
        return v > 0 ? "+Inf" : "-Inf";
    if (std::isnan(v))
        return "NaN";
    char buf[64];
    auto end = std::to_chars(buf, buf + sizeof buf, v).ptr; // shortest text that reads back as v
    return std::string(buf, end);
}

} // namespace

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help)
{
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

void sample(std::string& out, std::string_view name, std::initializer_list<label> labels, double value)
{
    out += name;
    append_labels(out, labels);
    out += ' ';
    out += format_double(value);
    out += '\n';
}

void sample(std::string& out, std::string_view name, std::initializer_list<label> labels, std::uint64_t value)
{
    out += name;
    append_labels(out, labels);
    out += ' ';
    out += std::to_string(value);
    out += '\n';
}

void histogram(std::string& out, std::string_view name, const histogram_view& h)
{
    std::string bucket = std::string(name) + "_bucket";
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i <= h.bound_count; ++i) {
        cumulative += h.bucket_counts[i];
        out += bucket;
        append_labels(out, {}, "le", i < h.bound_count ? format_double(h.bounds[i]) : "+Inf");
        out += ' ';
        out += std::to_string(cumulative);
        out += '\n';
    }
    sample(out, std::string(name) + "_sum", {}, h.sum);
    // The +Inf bucket's total, so a scrape racing an observation stays self-consistent.
    sample(out, std::string(name) + "_count", {}, cumulative);
}

} // namespace sg::prometheus
