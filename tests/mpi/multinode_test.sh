#!/bin/bash
# A multi-node MPI job on one machine: two test hosts made of network namespaces
# (tools/netns_hosts.sh), two ranks on each, all traffic over TCP between the hosts.
# Checks that (i) collectives across the hosts give exact results (par_mpi_probe layout and
# the whole par_mpi_tests suite), (ii) each host sees node-local ranks 0 and 1 and its own
# host name, (iii) a rank that fails or dies on the second host still ends the job quickly.
#
#   multinode_test.sh PAR_MPI_PROBE PAR_MPI_TESTS
#
# Exits 77 (CTest: skipped) when not root or when network namespaces cannot be made here.
# More runs across the hosts: netns_run ARGS... (as tools/netns_mpirun.sh -- ARGS...).
set -uo pipefail

probe=${1:?usage: multinode_test.sh PAR_MPI_PROBE PAR_MPI_TESTS}
tests=${2:?usage: multinode_test.sh PAR_MPI_PROBE PAR_MPI_TESTS}
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../tools" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

skip() { echo "multinode_test: SKIPPED: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "the ip command (iproute2) is missing"
ip netns list >/dev/null 2>&1 || skip "'ip netns' is not available"
unshare --net --uts true 2>/dev/null || skip "cannot create network/UTS namespaces here"

failed=0
out=$(mktemp)
# Whatever happens, leave no namespaces behind (netns_mpirun.sh also cleans up after itself).
trap '"$tools/netns_hosts.sh" down >/dev/null 2>&1; rm -f "$out"' EXIT

# netns_run ARGS...: mpirun ARGS across parhost1:2,parhost2:2, output in $out, sets
# rc and elapsed (seconds).
netns_run() {
  local t0 t1
  t0=$(date +%s.%N)
  timeout -k 10 100 "$tools/netns_mpirun.sh" --hosts 2 --slots 2 -- "$@" >"$out" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
}

report() {  # report NAME VERDICT
  echo "multinode_test: $1: exit status $rc after ${elapsed} s: $2"
  if [[ $2 != ok ]]; then
    failed=1
    sed 's/^/    | /' "$out"
  fi
}

# (i) + (ii): exact collectives on layout (2,2,1) and the placement of the ranks.
netns_run -np 4 "$probe" layout --dp 2 --sp 2 --tp 1
expected="layout rank 0 host parhost1 local_rank 0 dp 0 sp 0 tp 0
layout rank 1 host parhost1 local_rank 1 dp 0 sp 1 tp 0
layout rank 2 host parhost2 local_rank 0 dp 1 sp 0 tp 0
layout rank 3 host parhost2 local_rank 1 dp 1 sp 1 tp 0
probe: collectives ok"
verdict=ok
if [[ $rc -ne 0 ]]; then
  verdict="FAILED: non-zero exit"
elif [[ $(grep -E '^(layout|probe:)' "$out") != "$expected" ]]; then
  verdict="FAILED: expected exactly:
$expected"
fi
report "layout (2,2,1) on parhost1:2,parhost2:2" "$verdict"

# (i): every collective test, now over TCP between hosts (and the grid's node-local ranks
# computed with MPI_Comm_split_type on sub-communicators that span both hosts).
netns_run -np 4 "$tests"
verdict=ok
[[ $rc -eq 0 ]] || verdict="FAILED: par_mpi_tests failed across hosts"
report "par_mpi_tests across hosts" "$verdict"

# (iii): failures on the second host end the job within 30 s.
for mode in throw kill; do
  netns_run -np 4 "$probe" "$mode" --rank 3 --at 30
  verdict=ok
  if [[ $rc -eq 0 || $rc -eq 124 ]]; then
    verdict="FAILED: the job did not fail, or hung"
  elif awk -v e="$elapsed" 'BEGIN { exit !(e >= 30) }'; then
    verdict="FAILED: took more than 30 s"
  elif [[ $mode == throw ]] && ! grep -qF "rank 3 on host parhost2: error: injected failure" "$out"; then
    verdict="FAILED: no rank-tagged error message from parhost2"
  fi
  report "rank 3 on parhost2: $mode" "$verdict"
done

exit $failed
