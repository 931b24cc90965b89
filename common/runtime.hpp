#pragma once
// How every Streamgate process runs: one io_context on one thread per core, and a graceful stop
// on SIGTERM/SIGINT (stop taking new work, let live streams finish up to a drain timeout).
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <spdlog/logger.h>

namespace sg {

unsigned thread_count(unsigned requested); // 0 = one per core

// Where a proxy runs a new connection: a strand of ioc when `threads` run it, the io_context
// itself on one thread (a strand would order nothing more there, and every connection then has
// the same executor, so a stream pumped between its new local socket and a relay connection kept
// from an earlier stream hands no message from one executor to another).
boost::asio::any_io_executor connection_executor(boost::asio::io_context& ioc, unsigned threads);

struct graceful_stop {
    std::function<void(int signal)> begin;      // stop accepting, close control connections
    std::function<std::size_t()> active;        // live streams still running
    std::chrono::seconds drain_timeout{10};
};

// Runs ioc on `threads` threads until it is stopped. A second signal stops at once.
void run_until_stopped(boost::asio::io_context& ioc, unsigned threads, graceful_stop stop, spdlog::logger& log);

// One io_context per thread (the relay): a connection stays on one thread for its whole life, so
// its operations need no strand and hand nothing to another thread; the relay moves the second
// connection of a paired stream to the first one's thread (tls_stream::rebind).
class io_pool {
public:
    explicit io_pool(unsigned threads);
    // Acceptors, timers and signals live here; it serves connections too.
    boost::asio::io_context& main() { return *contexts_.front(); }
    // The context for a new connection, in turn.
    boost::asio::io_context& next();
    std::size_t size() const { return contexts_.size(); }
    boost::asio::io_context& context(std::size_t i) { return *contexts_.at(i); }
    // Runs every context on its own thread until stopped, as run_until_stopped.
    void run(graceful_stop stop, spdlog::logger& log);

private:
    std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
    std::atomic<std::size_t> next_{0};
};

} // namespace sg
