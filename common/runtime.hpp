#pragma once
// How every Streamgate process runs: one io_context on one thread per core, and a graceful stop
// on SIGTERM/SIGINT (stop taking new work, let live streams finish up to a drain timeout).
#include <chrono>
#include <cstddef>
#include <functional>
#include <boost/asio/io_context.hpp>
#include <spdlog/logger.h>

namespace sg {

unsigned thread_count(unsigned requested); // 0 = one per core

struct graceful_stop {
    std::function<void(int signal)> begin;      // stop accepting, close control connections
    std::function<std::size_t()> active;        // live streams still running
    std::chrono::seconds drain_timeout{10};
};

// Runs ioc on `threads` threads until it is stopped. A second signal stops at once.
void run_until_stopped(boost::asio::io_context& ioc, unsigned threads, graceful_stop stop, spdlog::logger& log);

} // namespace sg
