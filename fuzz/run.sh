#!/usr/bin/env bash
# Bounded fuzzing run (issue 3, "Fuzzing"): builds the libFuzzer targets with clang in a separate
# tree (build-fuzz) and runs each for FUZZ_SECONDS (default 20) on a copy of its committed corpus.
# Exits 1 when a target crashes (log and crashing input are kept under build-fuzz/fuzz-out/<target>/),
# 0 after saying so when clang or libFuzzer is not available.
#
#   FUZZ_SECONDS=60 fuzz/run.sh             longer run
#   FUZZ_TARGETS="router protocol" fuzz/run.sh
#   FUZZ_CXX=clang++-14 fuzz/run.sh         another clang
#   FUZZ_BUILD_DIR=/tmp/bf fuzz/run.sh      another build tree
# Reproduce a crash: build-fuzz/fuzz/fuzz_<target> FILE (or, gcc build: sg_fuzz_replay <target> FILE).
# Grow the committed corpus with what a run found: see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
build=${FUZZ_BUILD_DIR:-build-fuzz}
read -r -a targets <<<"${FUZZ_TARGETS:-connection_string sas_token protocol router mqtt}"

skip() {
    echo "fuzz/run.sh: SKIPPED, no fuzzing done: $*"
    exit 0
}

cxx=${FUZZ_CXX:-}
if [ -z "$cxx" ]; then
    for c in clang++ clang++-16 clang++-15 clang++-14; do
        if command -v "$c" >/dev/null 2>&1; then cxx=$c; break; fi
    done
fi
[ -n "$cxx" ] || skip "clang++ not found (Debian 12: apt-get install clang libclang-rt-14-dev)"
command -v "$cxx" >/dev/null 2>&1 || skip "$cxx not found"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/probe.cpp" <<'EOF'
#include <cstddef>
#include <cstdint>
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t*, std::size_t) { return 0; }
EOF
if ! "$cxx" -fsanitize=fuzzer,address,undefined "$tmp/probe.cpp" -o "$tmp/probe" >"$tmp/probe.log" 2>&1; then
    sed 's/^/  /' "$tmp/probe.log" | tail -5
    skip "$cxx cannot link -fsanitize=fuzzer,address,undefined (Debian 12: apt-get install libclang-rt-14-dev)"
fi

echo "fuzz: building ${targets[*]} with $cxx in $build"
if ! cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER="$cxx" -DSTREAMGATE_FUZZ=ON \
        -DSTREAMGATE_BUILD_TESTS=OFF >"$tmp/configure.log" 2>&1; then
    cat "$tmp/configure.log"
    echo "fuzz/run.sh: configuring $build failed"
    exit 1
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"

out="$build/fuzz-out"
failed=()
for t in "${targets[@]}"; do
    bin="$build/fuzz/fuzz_$t"
    work="$tmp/corpus-$t"
    rm -rf "$out/$t"
    mkdir -p "$out/$t" "$work"
    cp fuzz/corpus/"$t"/* "$work"/
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1
          -artifact_prefix="$out/$t/")
    [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
    log="$out/$t/fuzz.log"
    echo "fuzz: $t for ${seconds}s ($(ls "$work" | wc -l) corpus inputs)"
    if "$bin" "${args[@]}" "$work" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        echo "fuzz: $t OK: ${runs:-?} runs, ${rate:-?} exec/s, $cov, corpus $(ls "$work" | wc -l) inputs"
    else
        failed+=("$t")
        echo "fuzz: $t FAILED; log: $log"
        # The broken check or sanitizer report, the project's stack frames, where the input went.
        grep -E 'invariant broken|ERROR: |runtime error|^SUMMARY|#[0-9]+ 0x[0-9a-f]+ in .*(sg::|sg_fuzz|anonymous namespace|LLVMFuzzerTestOneInput|boost::json)|Test unit written|^Base64' \
            "$log" | head -40 | cut -c1-300 | sed 's/^/  /'
        for a in "$out/$t"/crash-* "$out/$t"/leak-* "$out/$t"/timeout-* "$out/$t"/oom-*; do
            [ -f "$a" ] && echo "  reproduce: $bin $a"
        done
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz/run.sh: all ${#targets[@]} targets ran ${seconds}s without a crash"
