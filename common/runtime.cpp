#include "common/runtime.hpp"

#include <algorithm>
#include <memory>
#include <thread>
#include <vector>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/steady_timer.hpp>

namespace sg {
namespace asio = boost::asio;

unsigned thread_count(unsigned requested)
{
    return requested ? requested : std::max(1u, std::thread::hardware_concurrency());
}

boost::asio::any_io_executor connection_executor(boost::asio::io_context& ioc, unsigned threads)
{
    if (threads <= 1)
        return ioc.get_executor();
    return boost::asio::make_strand(ioc);
}

namespace {

struct drainer : std::enable_shared_from_this<drainer> {
    drainer(asio::io_context& ioc, std::function<void()> stop_all, graceful_stop s, spdlog::logger& l)
        : ioc(ioc), stop_all(std::move(stop_all)), stop(std::move(s)), log(l), timer(ioc)
    {
    }

    void wait_signal()
    {
        signals.async_wait([self = shared_from_this()](const boost::system::error_code& ec, int signal) {
            if (ec)
                return;
            if (self->stopping) {
                self->log.warn("second signal {}: stopping now", signal);
                self->stop_all();
                return;
            }
            self->stopping = true;
            self->deadline = std::chrono::steady_clock::now() + self->stop.drain_timeout;
            if (self->stop.begin)
                self->stop.begin(signal);
            self->poll();
            self->wait_signal();
        });
    }

    void poll()
    {
        std::size_t live = stop.active ? stop.active() : 0;
        if (live == 0 || std::chrono::steady_clock::now() >= deadline) {
            if (live)
                log.warn("drain timeout: closing {} live stream(s)", live);
            log.info("event=Stopped");
            stop_all();
            return;
        }
        timer.expires_after(std::chrono::milliseconds(50));
        timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
            if (!ec)
                self->poll();
        });
    }

    asio::io_context& ioc;
    std::function<void()> stop_all;
    graceful_stop stop;
    spdlog::logger& log;
    asio::steady_timer timer;
    asio::signal_set signals{ioc, SIGINT, SIGTERM};
    bool stopping = false;
    std::chrono::steady_clock::time_point deadline;
};

} // namespace

void run_until_stopped(asio::io_context& ioc, unsigned threads, graceful_stop stop, spdlog::logger& log)
{
    auto d = std::make_shared<drainer>(ioc, [&ioc] { ioc.stop(); }, std::move(stop), log);
    d->wait_signal();
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < threads; ++i)
        pool.emplace_back([&ioc] { ioc.run(); });
    ioc.run();
    for (auto& t : pool)
        t.join();
}

io_pool::io_pool(unsigned threads)
{
    for (unsigned i = 0; i < std::max(1u, threads); ++i)
        contexts_.push_back(std::make_unique<asio::io_context>(1));
}

asio::io_context& io_pool::next() { return *contexts_[next_.fetch_add(1, std::memory_order_relaxed) % contexts_.size()]; }

void io_pool::run(graceful_stop stop, spdlog::logger& log)
{
    auto stop_all = [this] {
        for (auto& c : contexts_)
            c->stop();
    };
    auto d = std::make_shared<drainer>(main(), stop_all, std::move(stop), log);
    d->wait_signal();
    // Each context runs until stopped, even while it has no work yet.
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> work;
    for (auto& c : contexts_)
        work.push_back(asio::make_work_guard(*c));
    std::vector<std::thread> threads;
    for (std::size_t i = 1; i < contexts_.size(); ++i)
        threads.emplace_back([c = contexts_[i].get()] { c->run(); });
    main().run();
    for (auto& t : threads)
        t.join();
}

} // namespace sg
