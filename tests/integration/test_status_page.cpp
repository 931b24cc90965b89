// The relay's status page in a real headless Chromium: one page, loaded once, shows a device going
// online and a stream appearing as they happen. status_page_check.py drives Chromium over the
// DevTools protocol and reports what the page shows; this test acts when it is told.
#include <catch2/catch.hpp>

#include <filesystem>
#include <iostream>

#include "admin_http_client.hpp"
#include "harness.hpp"

using namespace sgit;
namespace fs = std::filesystem;

namespace {

std::optional<std::string> find_chromium() {
    for (const char* candidate : {"/usr/bin/chromium", "/usr/bin/chromium-browser"})
        if (fs::exists(candidate)) return std::string(candidate);
    return std::nullopt;
}

// Waits until the checker printed `line` (true), or failed / exited / timed out (false).
bool wait_for_line(process& checker, const std::string& line, millis timeout = 30s) {
    wait_until(
        [&] {
            std::string out = checker.stdout_text();
            return contains(out, line + "\n") || contains(out, "FAIL ") || !checker.running();
        },
        timeout, 50ms);
    return contains(checker.stdout_text(), line + "\n");
}

}  // namespace

TEST_CASE("status page: headless Chromium sees a device go online and a stream appear on the same open page",
          "[integration][status-page]") {
    auto chromium = find_chromium();
    if (!chromium) {
        WARN("SKIPPED: chromium is not installed (apt-get install chromium; scripts/install-deps.sh does)");
        return;
    }
    echo_server target;
    relay_fixture relay(relay_config{.args = {"--admin-listen", "127.0.0.1:0"}});
    const std::string admin = wait_listening_address(relay.relay(), "event=AdminListening");
    REQUIRE_FALSE(admin.empty());
    const std::string device_id = "status-page-device";
    const std::string stream_name = "ssh";
    const std::string device_cs = relay.create_device(device_id);
    const std::string service_cs = relay.service_connection_string();

    fs::create_directories(SG_TEST_ARTIFACTS_DIR);
    const fs::path screenshot = fs::path(SG_TEST_ARTIFACTS_DIR) / "status-page.png";
    fs::remove(screenshot);
    const fs::path profile = relay.dir() / "chromium-profile";
    fs::create_directories(profile);
    std::unique_ptr<process> checker = relay.spawn(
        "status-page-check",
        {"python3", SG_STATUS_PAGE_CHECK, "--chromium", *chromium, "--url", "http://" + admin + "/", "--device",
         device_id, "--stream-name", stream_name, "--stream-bytes-text", "64.0 KiB", "--screenshot", screenshot.string(), "--user-data-dir",
         profile.string(), "--timeout", "50"});
    auto report = [&] { return checker->describe() + "\n" + checker->stdout_text(); };

    // 1. The page is up and lists the registered device as offline.
    {
        bool loaded = wait_for_line(*checker, "PAGE-LOADED offline", 40s);
        INFO(report());
        REQUIRE(loaded);
    }
    // 2. The device connects; the same page shows it online.
    std::unique_ptr<process> device = relay.spawn(
        "device-proxy", {bin::device_proxy, "--ca-file", relay.ca_file().string(), device_cs, "--service",
                         stream_name + "=127.0.0.1:" + std::to_string(target.port())});
    {
        bool online = wait_for_line(*checker, "DEVICE-ONLINE");
        INFO(report());
        INFO(device->describe());
        REQUIRE(online);
    }
    // 3. A stream opens and stays open; the same page shows its row.
    const int local_port = free_port();
    std::unique_ptr<process> service = relay.spawn(
        "service-proxy", {bin::service_proxy, "--ca-file", relay.ca_file().string(), "--stream-name", stream_name,
                          service_cs, device_id, std::to_string(local_port)});
    REQUIRE(wait_for_port(local_port));
    unique_fd conn = open_echo_stream(local_port, 64 * 1024);
    {
        bool shown = wait_for_line(*checker, "STREAM-SHOWN");
        INFO(report());
        REQUIRE(shown);
    }
    bool done = wait_until([&] { return !checker->running(); }, 30s);
    INFO(report());
    REQUIRE(done);
    CHECK(checker->exit_code() == 0);
    CHECK(contains(checker->stdout_text(), "SAME-PAGE\n"));
    CHECK(contains(checker->stdout_text(), "SCREENSHOT "));
    REQUIRE(fs::exists(screenshot));
    CHECK(fs::file_size(screenshot) > 10000);
    const std::string png = read_file(screenshot);
    CHECK(png.rfind("\x89PNG\r\n\x1a\n", 0) == 0);
    // The row showed the stream's 64 KiB each way before the screenshot was taken.
    CHECK(contains(checker->stdout_text(), "STREAM-BYTES 64.0 KiB\n"));
    std::cout << "[status page] screenshot kept at " << screenshot.string() << "\n";
}
