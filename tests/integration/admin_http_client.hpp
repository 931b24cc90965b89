// Plain-HTTP GET against the admin listeners (relay --admin-listen, device proxy
// --metrics-listen) and small readers for the Prometheus text they serve. Header-only: used by
// test_metrics.cpp and test_status_page.cpp.
#pragma once

#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <regex>
#include <string>

#include "harness.hpp"

namespace sgit {

struct http_answer {
    int status = 0;      // 0: no answer (connection failed or timed out)
    std::string error;   // why there was no answer
    std::string headers;
    std::string body;
};

// GET http://<address><path> with "Connection: close"; address is "127.0.0.1:PORT".
inline http_answer http_get(const std::string& address, const std::string& path, const std::string& host_header = "",
                            millis timeout = 5s) {
    http_answer a;
    auto colon = address.rfind(':');
    connect_result c = try_connect(address.substr(0, colon), std::stoi(address.substr(colon + 1)), timeout);
    if (!c.ok()) {
        a.error = c.describe();
        return a;
    }
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    ::setsockopt(c.fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string request = "GET " + path + " HTTP/1.1\r\nHost: " + (host_header.empty() ? address : host_header) +
                          "\r\nConnection: close\r\n\r\n";
    if (::send(c.fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) {
        a.error = std::string("send: ") + std::strerror(errno);
        return a;
    }
    std::string raw;
    char buf[16384];
    for (;;) {
        ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
        if (n == 0) break;
        if (n < 0) {
            a.error = std::string("recv: ") + std::strerror(errno);
            return a;
        }
        raw.append(buf, static_cast<std::size_t>(n));
    }
    auto end = raw.find("\r\n\r\n");
    if (raw.rfind("HTTP/1.1 ", 0) != 0 || end == std::string::npos) {
        a.error = "not an HTTP response: " + tail(raw, 200);
        return a;
    }
    a.status = std::stoi(raw.substr(9, 3));
    a.headers = raw.substr(0, end);
    a.body = raw.substr(end + 4);
    return a;
}

// Waits for `<event> address=ADDR:PORT` in a process's log (stderr) and returns ADDR:PORT.
inline std::string wait_listening_address(process& p, const std::string& event, millis timeout = k_start_timeout) {
    const std::regex line(event + R"( address=(\S+))");
    std::string found;
    wait_until(
        [&] {
            std::smatch m;
            std::string log = p.stderr_text();
            if (std::regex_search(log, m, line)) found = m[1];
            return !found.empty() || !p.running();
        },
        timeout);
    return found;
}

// The value of one series ("name" or "name{labels}" exactly as exported), or nullopt if absent.
inline std::optional<double> metric(const std::string& text, const std::string& series) {
    std::size_t pos = 0;
    while ((pos = text.find(series + " ", pos)) != std::string::npos) {
        if (pos == 0 || text[pos - 1] == '\n') {
            auto eol = text.find('\n', pos);
            return std::stod(text.substr(pos + series.size() + 1, eol - pos - series.size() - 1));
        }
        pos += series.size();
    }
    return std::nullopt;
}

}  // namespace sgit
