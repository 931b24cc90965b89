#pragma once
// What every registry backend shares (internal to sg_registry): identifiers, etag rules and the
// default shared access policies, so SQLite and PostgreSQL behave the same.
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include "relay/registry.hpp"

namespace sg::relay::detail {

// IoT Hub shows generation ids as long decimal numbers; the value is only compared, never parsed.
std::string new_generation_id();
std::string new_etag();
// if_match empty or "*" matches anything.
bool etag_matches(std::string_view if_match, std::string_view stored);

// The five policies a new registry gets, each with fresh keys.
std::vector<access_policy> default_policies();

// Fills what create_device sets: generation id, etag, times, fresh keys for an sas device.
void prepare_new_device(device_identity& d);
// Fills what update_device keeps from the stored row (and keys an update omitted); bumps etag.
void prepare_update(device_identity& d, const device_identity& stored);

} // namespace sg::relay::detail
