#pragma once
// A tiny plain-HTTP server for the admin endpoints (/metrics, /healthz, the status page) of the
// relay and the device proxy. GET and HEAD only, small requests, a few connections at a time.
// Beast stays in the .cpp.
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace boost::asio {
class io_context;
}
namespace spdlog {
class logger;
}

namespace sg {

struct http_reply {
    int status = 200;
    std::string content_type = "text/plain; charset=utf-8";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers; // extra response headers
};

// Called on the connection's strand with the request target (path and query); must be
// thread-safe. Exceptions become a 500.
using http_handler = std::function<http_reply(const std::string& target)>;

class http_server {
public:
    virtual ~http_server() = default;
    virtual std::string address() const = 0; // the bound "ADDR:PORT" ("[::1]:9464" for IPv6)
    virtual void close() = 0;                // stops accepting; open requests finish
};

// "ADDR:PORT" is an IP literal (or "localhost") and a port (0 picks a free one). Binds and starts
// accepting on ioc; throws std::runtime_error when the address is invalid or cannot be bound.
// A listener bound to loopback answers only requests whose Host header names loopback (a web page
// in a browser on the same machine cannot read it through DNS rebinding).
std::shared_ptr<http_server> start_http_server(boost::asio::io_context& ioc, const std::string& listen,
                                               http_handler handler, std::shared_ptr<spdlog::logger> log);

// "off" or "" turns an admin listener off.
inline bool listener_disabled(const std::string& listen) { return listen.empty() || listen == "off"; }

} // namespace sg
