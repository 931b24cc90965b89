// sg::tls_stream over a real loopback TCP connection: operations that finish at once complete
// inside their initiating call only up to a small depth, and other handlers keep their turn.
#include <catch2/catch.hpp>

#include <filesystem>
#include <random>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include "common/tls.hpp"
#include "common/tls_stream.hpp"
#include "relay/certificates.hpp"

namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using tcp = asio::ip::tcp;

struct temp_dir {
    std::filesystem::path path;
    temp_dir()
    {
        std::random_device rd;
        path = std::filesystem::temp_directory_path() / ("sg-tls-stream-" + std::to_string(rd()));
        std::filesystem::create_directories(path);
    }
    ~temp_dir()
    {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
};

// A chain of small writes, each started from the completion of the one before.
struct write_chain {
    sg::tls_stream& stream;
    int remaining;
    int depth = 0, max_depth = 0, nested = 0, done = 0;
    int completed_when_probe_ran = -1;
    error_code failure;
    const char payload[16] = "0123456789abcde";

    void next()
    {
        stream.async_write_some(asio::buffer(payload), [this](error_code ec, std::size_t) { on_written(ec); });
    }
    void on_written(error_code ec)
    {
        ++depth;
        max_depth = std::max(max_depth, depth);
        if (depth > 1)
            ++nested;
        ++done;
        if (ec)
            failure = ec;
        else if (--remaining > 0)
            next();
        --depth;
    }
};

} // namespace

TEST_CASE("tls_stream: operations that finish at once complete inline, at most a few deep, and others still run",
          "[tls_stream]")
{
    temp_dir dir;
    auto files = sg::relay::ensure_relay_certificates(dir.path, {});
    auto server_ctx = sg::make_server_tls_context(files.certificate_chain, files.private_key);
    auto client_ctx = sg::make_client_tls_context(files.ca_certificate);

    asio::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    tcp::socket client_socket(io);
    client_socket.connect(acceptor.local_endpoint());
    sg::tls_stream server(acceptor.accept(), server_ctx);
    sg::tls_stream client(std::move(client_socket), client_ctx);
    client.verify_host("127.0.0.1");

    error_code client_ec, server_ec;
    bool client_done = false, server_done = false;
    client.async_handshake(asio::ssl::stream_base::client, [&](error_code ec) { client_ec = ec, client_done = true; });
    server.async_handshake(asio::ssl::stream_base::server, [&](error_code ec) { server_ec = ec, server_done = true; });
    io.run_for(std::chrono::seconds(10));
    REQUIRE(client_done);
    REQUIRE(server_done);
    REQUIRE_FALSE(client_ec);
    REQUIRE_FALSE(server_ec);
    io.restart();

    // 1,000 writes of 16 bytes fit in the kernel's buffers: each one finishes at once.
    write_chain chain{client, 1000};
    asio::post(io, [&] { chain.next(); });
    asio::post(io, [&] { chain.completed_when_probe_ran = chain.done; });
    io.run_for(std::chrono::seconds(10));

    INFO("completed " << chain.done << ", probe ran after " << chain.completed_when_probe_ran << ", max depth "
                      << chain.max_depth << ", nested " << chain.nested);
    CHECK_FALSE(chain.failure);
    CHECK(chain.done == 1000);
    // Most completions ran inside the write that started them (no trip through the queue)...
    CHECK(chain.nested > 500);
    // ...but never more than a few calls deep, so the stack stays bounded...
    CHECK(chain.max_depth <= 5);
    // ...and a handler posted behind the chain ran long before the chain ended.
    CHECK(chain.completed_when_probe_ran >= 0);
    CHECK(chain.completed_when_probe_ran < 20);
}
