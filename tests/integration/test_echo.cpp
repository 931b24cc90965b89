// The echo sample end to end: echo device and echo service through the relay.
#include <catch2/catch.hpp>

#include "harness.hpp"

using namespace sgit;

namespace {

struct echo_setup {
    relay_fixture relay;
    const std::string device_id = "echo-device";
    std::string service_cs;
    std::unique_ptr<process> device;

    echo_setup() {
        const std::string device_cs = relay.create_device(device_id);
        service_cs = relay.service_connection_string();
        device = relay.spawn("echo-device",
                             {bin::echo_device, "--ca-file", relay.ca_file().string(), device_cs});
        bool connected = relay.wait_device_connected(device_id, *device);
        INFO(device->describe());
        REQUIRE(connected);
    }

    // Runs the echo service with `message` and checks that the message comes back.
    void echo(const std::string& message) {
        const std::vector<std::string> argv = {bin::echo_service, "--ca-file",
                                               relay.ca_file().string(), service_cs, device_id,
                                               message};
        run_result r = run(argv);
        INFO(describe(argv, r));
        INFO(device->describe());
        CHECK(r.exit_code == 0);
        CHECK(contains(r.out, message));
    }
};

std::string unique_message(const std::string& prefix) {
    return prefix + " " + sha256_hex(random_bytes(8)).substr(0, 12);
}

}  // namespace

TEST_CASE("echo: the echo service gets its message back from the echo device", "[integration][echo]") {
    echo_setup s;
    s.echo(unique_message("Streaming data over a stream..."));
}

TEST_CASE("echo: the echo device serves two sequential echo-service runs", "[integration][echo]") {
    echo_setup s;
    s.echo(unique_message("first stream"));
    CHECK(s.device->running());
    s.echo(unique_message("second stream"));
    INFO(s.device->describe());
    CHECK(s.device->running());
}
