// Catch2 main for the integration tests, plus a listener that tells the harness when the running
// test has failed so that child processes print their logs when they are torn down.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include "harness.hpp"

namespace {

struct failure_listener : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;

    void testCaseStarting(Catch::TestCaseInfo const& info) override {
        TestEventListenerBase::testCaseStarting(info);
        sgit::detail::set_test_failed(false);
    }

    bool assertionEnded(Catch::AssertionStats const& stats) override {
        if (!stats.assertionResult.isOk()) sgit::detail::set_test_failed(true);
        return TestEventListenerBase::assertionEnded(stats);
    }
};

}  // namespace

CATCH_REGISTER_LISTENER(failure_listener)
