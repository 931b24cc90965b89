#!/usr/bin/env bash
# One command from a fresh Debian 12: install what is needed, build, run every test
# (unit, integration with real binaries, TLS and sshd on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd build
ctest --output-on-failure --timeout 600 -j 2 "$@"
