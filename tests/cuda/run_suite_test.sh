#!/bin/sh
# run_suite.sh's exit statuses, with stand-ins for par_cuda_tests: a suite that skipped
# every test is "skipped" (77), one that ran some passes (0), and a failure stays a failure
# even when its output also reports skipped tests.
# Usage: run_suite_test.sh RUN_SUITE_SH
runner=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fake() {  # name, exit status, output lines
  name=$1 status=$2
  shift 2
  { echo '#!/bin/sh'; for line in "$@"; do printf "echo '%s'\n" "$line"; done
    echo "exit $status"; } >"$dir/$name"
  chmod +x "$dir/$name"
}
fake all_skipped 0 '[  PASSED  ] 0 tests.' '[  SKIPPED ] 3 tests, listed below:'
fake some_ran 0 '[  PASSED  ] 2 tests.' '[  SKIPPED ] 1 test, listed below:'
fake failed 1 '[  PASSED  ] 0 tests.' '[  SKIPPED ] 3 tests, listed below:' '[  FAILED  ] 1 test'
fake crashed 134 '[ RUN      ] Suite.Test'
failures=0
expect() {  # fake, expected exit status
  sh "$runner" "$dir/$1" Suite >/dev/null
  got=$?
  if [ "$got" -ne "$2" ]; then
    echo "run_suite.sh on $1: exit $got, expected $2"
    failures=$((failures + 1))
  fi
}
expect all_skipped 77
expect some_ran 0
expect failed 1
expect crashed 134
[ "$failures" -eq 0 ] && echo "run_suite.sh: all 4 cases as expected"
exit "$failures"
