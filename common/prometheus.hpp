#pragma once
// Writes the Prometheus text exposition format (version 0.0.4). No I/O, no locks.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

namespace sg::prometheus {

inline constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

using label = std::pair<std::string_view, std::string_view>;

// "# HELP name help\n# TYPE name type\n"; type is counter, gauge or histogram.
void family(std::string& out, std::string_view name, std::string_view type, std::string_view help);
// "name{k="v",...} value\n" (label values escaped).
void sample(std::string& out, std::string_view name, std::initializer_list<label> labels, double value);
void sample(std::string& out, std::string_view name, std::initializer_list<label> labels, std::uint64_t value);

// Cumulative histogram with fixed bucket bounds (seconds), the way the exposition format wants it.
struct histogram_view {
    const double* bounds;              // ascending upper bounds, +Inf implied
    const std::uint64_t* bucket_counts; // per bucket (not cumulative), one more than bounds (+Inf)
    std::size_t bound_count;
    double sum;
};
void histogram(std::string& out, std::string_view name, const histogram_view& h);

} // namespace sg::prometheus
