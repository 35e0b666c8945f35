#!/bin/bash
# A failing rank must end the whole MPI job quickly, never leave it hanging:
#  (a) one rank throws in the middle of a loop of collectives: main() prints the
#      rank-tagged error and calls MpiEnvironment::abort, and mpirun exits non-zero;
#  (b) one rank dies by SIGKILL mid-loop: mpirun notices and exits non-zero.
# Each run must end within LIMIT seconds (a hang is caught by an outer timeout).
#
#   abort_test.sh PAR_MPI_PROBE          (mpirun from $PAR_MPIRUN, else PATH)
set -uo pipefail

probe=${1:?usage: abort_test.sh PAR_MPI_PROBE}
mpirun=${PAR_MPIRUN:-mpirun}
LIMIT=30
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
failed=0
tag="$$-$RANDOM"

# run NAME EXPECTED_TEXT probe-args...
run() {
  local name=$1 expect=$2
  shift 2
  local out t0 t1 rc elapsed
  out=$(mktemp)
  t0=$(date +%s.%N)
  # TERM first (mpirun then kills its processes), KILL 10 s later if that is ignored.
  # (mpirun's own status is 137 when a rank died of SIGKILL, so only 124 means a hang.)
  PAR_ABORT_TEST_TAG=$tag timeout -k 10 $((LIMIT * 2)) "$mpirun" --oversubscribe --allow-run-as-root -np 4 \
    "$probe" "$@" >"$out" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  local verdict=ok
  if [[ $rc -eq 0 ]]; then
    verdict="FAILED: mpirun exited 0"
  elif [[ $rc -eq 124 ]]; then
    verdict="FAILED: the job hung (stopped by timeout)"
  elif awk -v e="$elapsed" -v l="$LIMIT" 'BEGIN { exit !(e >= l) }'; then
    verdict="FAILED: took ${elapsed} s (limit ${LIMIT} s)"
  elif ! grep -qF -- "$expect" "$out"; then
    verdict="FAILED: output lacks '$expect'"
  fi
  echo "abort_test: $name: exit status $rc after ${elapsed} s: $verdict"
  if [[ $verdict != ok ]]; then
    failed=1
    sed 's/^/    | /' "$out"
  fi
  rm -f "$out"
}

run "rank 2 throws" "par_mpi_probe: rank 2 on host $(hostname): error: injected failure" \
  throw --rank 2 --at 50
run "rank 1 is killed" "" kill --rank 1 --at 50

# No probe may outlive its job. The probes carry a tag in their environment, so probes of
# other jobs on this machine are not mistaken for ours; zombies (dead, waiting for an init
# that may never reap them) have no environment left and do not count. mpirun can return
# while the last killed rank is still being torn down, which on a loaded machine takes
# more than a moment: a probe counts as left behind when it is still there after 10 s.
left=
for ((wait = 0; wait < 100; wait++)); do
  left=$(grep -lsF "PAR_ABORT_TEST_TAG=$tag" /proc/[0-9]*/environ || true)
  [[ -z $left ]] && break
  sleep 0.1
done
if [[ -n $left ]]; then
  echo "abort_test: FAILED: processes left behind:"
  for f in $left; do pid=${f#/proc/}; pid=${pid%/environ}; ps -o pid=,stat=,args= -p "$pid"; done
  failed=1
fi
exit $failed
