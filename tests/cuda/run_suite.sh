#!/bin/sh
# One GoogleTest suite of par_cuda_tests as one CTest entry (tests/cuda/CMakeLists.txt says
# when). Prints the suite's output as it is, and exits 77, which the entry's
# SKIP_RETURN_CODE turns into CTest's "skipped", only when the suite exited 0 having passed
# no test and skipped some: every test skipped, each with its reason above. A failure or a
# crash keeps its own exit status, so no skip can hide it.
# Usage: run_suite.sh TEST_BINARY SUITE
bin=$1
suite=$2
out=$("$bin" "--gtest_filter=$suite.*" 2>&1)
rc=$?
printf '%s\n' "$out"
[ "$rc" -ne 0 ] && exit "$rc"
case $out in
  *"[  PASSED  ] 0 tests."*"[  SKIPPED ]"*) exit 77 ;;
esac
exit 0
