// Boost.JSON compiled into the fuzz binaries (header-only mode) instead of linking the
// gcc-built libboost_json, so the JSON parser is instrumented for coverage and sanitizers too.
#include <boost/json/src.hpp>
