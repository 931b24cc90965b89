#pragma once
// The relay's admin listener (--admin-listen, plain HTTP, loopback by default): Prometheus
// /metrics, /healthz, /readyz, the status page at / and the JSON it polls at /api/status.
#include <memory>

namespace boost::asio {
class io_context;
}
namespace sg {
class http_server;
}

namespace sg::relay {

struct relay_state;

// Starts serving options.admin_listen and logs `event=AdminListening address=ADDR:PORT`. Returns
// nullptr when the listener is off, or when the default address is taken (a warning says so; an
// address given explicitly must bind or this throws).
std::shared_ptr<http_server> start_admin_listener(boost::asio::io_context& ioc, std::shared_ptr<relay_state> state);

} // namespace sg::relay
