#!/usr/bin/env bash
# Sets up (packages, build) and runs the whole test suite. This is the README's test
# command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# One test at a time: each test already uses both cores.
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure
