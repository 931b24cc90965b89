#include "common/proxy_tunnel.hpp"

#include <boost/asio/read_until.hpp>
#include <boost/asio/write.hpp>

namespace sg::client {

namespace {

failure tunnel_failure(const http_proxy& proxy, const std::string& what)
{
    return failure{0, "proxy " + proxy.authority() + " " + what};
}

} // namespace

asio::awaitable<failure> open_proxy_tunnel(beast::tcp_stream& stream, const http_proxy& proxy, const std::string& host,
                                           std::uint16_t port)
{
    // The CONNECT target always carries the port, IPv6 literals in brackets (RFC 9110 authority-form).
    std::string target = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
    std::string request = "CONNECT " + target + " HTTP/1.1\r\nHost: " + target +
                          "\r\nUser-Agent: streamgate/0.1\r\nProxy-Connection: Keep-Alive\r\n";
    if (proxy.has_credentials())
        request += "Proxy-Authorization: " + proxy.basic_credentials() + "\r\n";
    request += "\r\n";
    auto request_buffer = asio::buffer(request);
    auto written = co_await asio::async_write(stream, request_buffer, use_nothrow);
    if (auto wec = std::get<0>(written))
        co_return tunnel_failure(proxy, "failed while sending CONNECT: " + wec.message());

    std::string head;
    auto head_buffer = asio::dynamic_buffer(head, max_proxy_response_header);
    const std::string end_of_header = "\r\n\r\n";
    auto read = co_await asio::async_read_until(stream, head_buffer, end_of_header, use_nothrow);
    auto rec = std::get<0>(read);
    if (rec == beast::error::timeout)
        co_return tunnel_failure(proxy, "did not answer CONNECT in time");
    if (rec == asio::error::not_found)
        co_return tunnel_failure(proxy, "answered CONNECT with a header over " +
                                            std::to_string(max_proxy_response_header / 1024) + " KiB");
    if (rec == asio::error::eof)
        co_return tunnel_failure(proxy, "closed the connection without answering CONNECT");
    if (rec)
        co_return tunnel_failure(proxy, "failed while answering CONNECT: " + rec.message());
    std::size_t header_size = std::get<1>(read);

    // "HTTP/1.1 407 Proxy Authentication Required"
    std::string status_line = head.substr(0, head.find("\r\n"));
    if (status_line.size() < 12 || !status_line.starts_with("HTTP/1.") || status_line[8] != ' ' ||
        status_line.substr(9, 3).find_first_not_of("0123456789") != std::string::npos)
        co_return tunnel_failure(proxy, "answered CONNECT with something that is not HTTP/1");
    char digits0 = status_line[9];
    // The proxy's reason phrase goes into logs: printable and short.
    std::string status;
    for (char c : status_line.substr(9, 120))
        status += (c >= 0x20 && c < 0x7f) ? c : '?';
    if (digits0 != '2') {
        // 407 when credentials are missing; tinyproxy answers wrong ones with 401.
        bool auth = status.starts_with("407") || status.starts_with("401");
        std::string hint = !auth                     ? ""
                           : proxy.has_credentials() ? " (check the proxy user and password)"
                                                     : " (the proxy wants http://user:password@ in the proxy URL)";
        co_return tunnel_failure(proxy, "refused CONNECT to relay " + target + ": " + status + hint);
    }
    if (head.size() != header_size)
        co_return tunnel_failure(proxy, "sent data before the tunnel to " + target + " was set up");
    co_return failure{};
}

} // namespace sg::client
