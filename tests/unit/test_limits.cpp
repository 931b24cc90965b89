#include <catch2/catch.hpp>

#include "relay/limits.hpp"

using namespace sg::relay;
using namespace std::chrono_literals;

TEST_CASE("limits: a token bucket allows its burst, then its rate", "[limits]")
{
    token_bucket bucket(2.0, 3.0);
    steady_time t0 = std::chrono::steady_clock::now();
    CHECK(bucket.try_take(t0));
    CHECK(bucket.try_take(t0));
    CHECK(bucket.try_take(t0));
    std::chrono::milliseconds wait{0};
    CHECK_FALSE(bucket.try_take(t0, &wait));
    CHECK(wait == 500ms);
    CHECK_FALSE(bucket.try_take(t0 + 400ms));
    CHECK(bucket.try_take(t0 + 500ms));
    CHECK_FALSE(bucket.full(t0 + 500ms));
    CHECK(bucket.full(t0 + 10s));
}

TEST_CASE("limits: admission caps concurrent streams per device and releases with the slot", "[limits]")
{
    stream_limits l;
    l.max_streams_per_device = 2;
    auto admission = std::make_shared<stream_admission>(l);
    auto now = std::chrono::steady_clock::now();
    auto a = admission->admit("dev", now);
    auto b = admission->admit("dev", now);
    REQUIRE(a.slot);
    REQUIRE(b.slot);
    auto c = admission->admit("dev", now);
    CHECK_FALSE(c.slot);
    CHECK(c.refused.code == 429001);
    CHECK_THAT(c.refused.message, Catch::Contains("this device"));
    CHECK(c.retry_after >= 1s);
    CHECK(admission->admit("other", now).slot); // another device is not affected
    a.slot.reset();
    CHECK(admission->active() == 1);
    CHECK(admission->admit("dev", now).slot);
}

TEST_CASE("limits: admission caps the whole relay and rate-limits per device and globally", "[limits]")
{
    auto now = std::chrono::steady_clock::now();
    SECTION("global concurrency")
    {
        stream_limits l;
        l.max_streams = 1;
        auto admission = std::make_shared<stream_admission>(l);
        auto a = admission->admit("d1", now);
        REQUIRE(a.slot);
        auto b = admission->admit("d2", now);
        CHECK_FALSE(b.slot);
        CHECK_THAT(b.refused.message, Catch::Contains("relay"));
    }
    SECTION("per-device rate")
    {
        stream_limits l;
        l.device_stream_rate = 1;
        l.device_stream_burst = 2;
        auto admission = std::make_shared<stream_admission>(l);
        CHECK(admission->admit("d", now).slot);
        CHECK(admission->admit("d", now).slot);
        auto third = admission->admit("d", now);
        CHECK_FALSE(third.slot);
        CHECK_THAT(third.refused.message, Catch::Contains("rate limit of this device"));
        CHECK(third.retry_after == 1s);
        CHECK(admission->admit("d", now + 1s).slot);
    }
    SECTION("global rate")
    {
        stream_limits l;
        l.stream_rate = 1;
        l.stream_burst = 1;
        auto admission = std::make_shared<stream_admission>(l);
        CHECK(admission->admit("a", now).slot);
        auto second = admission->admit("b", now);
        CHECK_FALSE(second.slot);
        CHECK_THAT(second.refused.message, Catch::Contains("rate limit of the relay"));
    }
}
