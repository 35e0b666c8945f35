#!/bin/bash
# launch/slurm/par-train.sbatch on a real (one-node) SLURM cluster, both launchers:
#
#  1. srun --mpi=pmix (the default): submitted as 2 tasks (dp=2) with a one-minute --time
#     and --signal=B:USR1@10, the job must get SLURM's warning signal, checkpoint, requeue
#     itself, resume in the requeued run and finish the requested steps;
#  2. PAR_LAUNCHER=mpirun: the same cycle, the signal sent to the batch shell by
#     `scancel --batch --signal=USR1` once training is under way (the path is the same as
#     for SLURM's B: signal; only its timing is ours, so this part takes seconds).
#
# Each job's final parameters must equal, bit for bit, those of the same training run
# uninterrupted (launch/par-mpirun.sh, 2 ranks, outside SLURM).
#
#   slurm_requeue_test.sh PAR
#
# Starts its own cluster with tools/slurm_cluster.sh (in /tmp/par-slurm-test-cluster, on
# its own ports) and always stops it. Exits 77 (CTest: skipped) when not root or when SLURM or
# munge is not installed (Debian: munge slurmctld slurmd slurm-client; tools/setup.sh).
#
# Timing of part 1: SLURM checks time limits every 30 s and sends the --signal warning at the
# first check with at most W + 30 s left, i.e. 20 to 50 s into a 1-minute job for W = 10 s.
# The training is sized from a short calibration run to take about 55 s, so the first run is
# interrupted; a requeued job may start cred_expire + 1 = 11 s after the requeue, which puts
# its own warning about 47 s into it, after the at most 35 s of training left. If the job
# ran faster than the calibration promised and finished before any signal, it is submitted
# again with the steps sized from its own speed (twice at most). The uninterrupted runs are
# made afterwards with the steps the jobs used. 2.5 to 5 minutes on a 2-core machine.
set -uo pipefail

par=${1:?usage: slurm_requeue_test.sh PAR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
me=slurm_requeue_test
target_s=${PAR_SLURM_TEST_SECONDS:-55}   # training time of the signalled job
deadline_s=${PAR_SLURM_TEST_DEADLINE:-240}  # per job

say() { echo "$me: $(date +%T) $*"; }
skip() { say "SKIPPED: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root (slurmd starts job steps as the submitting user)"
for b in munged slurmctld slurmd sbatch srun scontrol scancel squeue sinfo; do
  command -v "$b" >/dev/null || skip "$b is not installed (Debian: munge slurmctld slurmd slurm-client)"
done
for b in mpirun h5diff flock; do
  command -v "$b" >/dev/null || { say "FAILED: $b not found"; exit 1; }
done

# Not part of any allocation this test may itself run in: mpirun would take the outer job's
# hosts for the uninterrupted runs, and sbatch would pass its SLURM_* variables on.
for v in $(compgen -e); do
  [[ $v == SLURM_* ]] && unset "$v"
done

# One run of this test at a time on a machine (several checkouts, several ctest runs): they
# would share the cluster's directory and ports, and the cores the timing depends on.
exec 9>/tmp/par-slurm-test.lock
flock -w 900 9 || { say "FAILED: another run of this test holds /tmp/par-slurm-test.lock"; exit 1; }

# Fixed places for the files and the cluster: if a run of this test was killed (CTest's
# timeout kills with SIGKILL, so no trap runs), the next run finds its daemons' pid files
# and stops them, and removes its files.
work=/tmp/par-slurm-test-work
export PAR_SLURM_DIR=/tmp/par-slurm-test-cluster
export PAR_SLURM_PORT=${PAR_SLURM_TEST_PORT:-16917}  # not the default 16817 of a user's cluster
export PAR_SLURM_CRED_EXPIRE=10                      # a requeued job may start 11 s later
ncpu=$(env -u OMP_NUM_THREADS nproc)
export PAR_SLURM_CPUS=$((ncpu < 2 ? 2 : ncpu))       # the 2 tasks run even on one core
cluster=$root/tools/slurm_cluster.sh
"$cluster" stop >/dev/null 2>&1
rm -rf "$work" "$PAR_SLURM_DIR"
mkdir -p "$work" || { say "FAILED: cannot create $work"; exit 1; }
keep=0
bg=""  # a background uninterrupted run
cleanup() {
  [[ -n $bg ]] && kill "$bg" 2>/dev/null && wait "$bg" 2>/dev/null
  "$cluster" stop >/dev/null 2>&1
  if ((keep)); then
    say "kept $work and $PAR_SLURM_DIR for inspection"
  else
    rm -rf "$work" "$PAR_SLURM_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

out=""  # the output file of the job being checked
fail() {
  say "FAILED: $*"
  if [[ -n $out && -f $out ]]; then
    say "--- job output ($out):"
    grep -v "cmd_train.cpp:[0-9]*\] step [0-9]*/" "$out" | tail -n 60
  fi
  for f in "$PAR_SLURM_DIR"/log/slurmctld.log "$PAR_SLURM_DIR"/log/slurmd.log; do
    [[ -f $f ]] && { say "--- $f (end):"; tail -n 15 "$f"; }
  done
  [[ -n ${PAR_SLURM_TEST_KEEP:-} ]] && keep=1
  exit 1
}

# What `par export --checkpoint` gets for a run: the run directory itself, which par
# resolves to its newest complete checkpoint (OUT/checkpoints/step-N). The one place to
# change if that ever changes.
checkpoint_of() { echo "$1"; }

# The median ms_per_step of a run's logged intervals but the first (start-up). Other load on
# this machine comes and goes: a job that then runs faster than that and finishes before
# SLURM's signal is submitted again (below), one that runs slower is requeued once more.
median_ms() {
  grep -o '"ms_per_step": [0-9.]*' "$1/metrics.jsonl" 2>/dev/null | awk '{print $2}' |
    tail -n +2 | sort -g | awk '{v[NR] = $1} END { if (NR) print v[int((NR + 1) / 2)] }' | grep .
}
# Steps for $1 seconds at $2 ms per step, rounded up to a thousand (at least 2,000).
steps_for() {
  awk -v t="$1" -v m="$2" 'BEGIN { s = int(t * 1000 / m / 1000 + 0.999) * 1000;
                                   print (s < 2000 ? 2000 : s) }'
}

# Two ranks share the two cores of a CI machine: nothing may spin while waiting.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive OMPI_MCA_mpi_yield_when_idle=1
export PAR=$par
t_start=$(date +%s)

"$par" prep copy --out "$work/data" --length 65 --examples 300 >/dev/null 2>&1 || fail "par prep"
train=(--config "$root/configs/tiny.ini" --data "$work/data/train-*.h5" --dp 2 --threads 1
       --checkpoint-every 0)

# Uninterrupted: run NAME STEPS [exec] (log every tenth step). With exec, in a background
# subshell, the wrapper takes the subshell's pid, so that cleanup's kill reaches it.
uninterrupted() {
  local how=()
  [[ ${3:-} == exec ]] && how=(exec)
  "${how[@]}" "$root/launch/par-mpirun.sh" -n 2 --oversubscribe -- train "${train[@]}" \
    --steps "$2" --log-every $(($2 / 10)) --out "$work/$1" >"$work/$1.log" 2>&1
}

# --- calibration: how fast steps are here ---------------------------------------------------
uninterrupted calibrate 3000 || fail "calibration run: $(tail -n 20 "$work/calibrate.log")"
ms=$(median_ms "$work/calibrate") || fail "calibration: no ms_per_step in $work/calibrate/metrics.jsonl"
steps=$(steps_for "$target_s" "$ms")
say "calibration: $ms ms/step (load average $(cut -d' ' -f1-3 /proc/loadavg)); the SLURM-signalled job trains $steps steps"

eval "$("$cluster" start)" || fail "the SLURM cluster did not start"
srun --mpi=list 2>&1 | grep -qw pmix || fail "srun --mpi=list has no pmix: $(srun --mpi=list 2>&1)"
cpus=$(sinfo -h -o %c)
((cpus >= 2)) || fail "the node offers $cpus CPU(s); the job needs 2"

# Reads job $1's state: sets info, state, restarts. Fails if the job cannot run.
read_job() {
  local reason
  info=$(scontrol -o show job "$1" 2>/dev/null)
  state=$(sed -n 's/.*JobState=\([^ ]*\).*/\1/p' <<<"$info")
  restarts=$(sed -n 's/.*Restarts=\([0-9]*\).*/\1/p' <<<"$info")
  reason=$(sed -n 's/.* Reason=\([^ ]*\).*/\1/p' <<<"$info")
  if [[ $state == PENDING ]]; then
    case $reason in
      None|BeginTime|Priority|Resources|Prolog|"") ;;
      *) fail "job $1 cannot run: reason $reason ($(sinfo -h -o '%c CPUs, state %T'))" ;;
    esac
  fi
}
job_ended() {
  case $state in
    COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) return 0 ;;
  esac
  return 1
}

# Waits for job $1 to end; sets state, restarts, exit_code, job_s. Fails if it cannot run
# or takes longer than deadline_s.
wait_job() {
  local t0
  t0=$(date +%s)
  while read_job "$1"; ! job_ended; do
    (($(date +%s) - t0 < deadline_s)) || fail "job $1 not done after $deadline_s s (state $state, $restarts restarts)"
    sleep 1
  done
  exit_code=$(sed -n 's/.* ExitCode=\([^ ]*\).*/\1/p' <<<"$info")
  job_s=$(($(date +%s) - t0))
}

# The checks common to both jobs: job $1 of $2 steps, output $out, one or more requeues.
check_cycle() {
  [[ $state == COMPLETED && $exit_code == 0:0 ]] || fail "job $1 ended $state (exit code $exit_code)"
  ((restarts >= 1)) || fail "job $1 was never requeued"
  grep -q "par-train.sbatch: .* SIGUSR1: asking the ranks to checkpoint" "$out" \
    || fail "the batch script did not get SIGUSR1"
  grep -q "stopping after step [0-9]* because of a stop signal" "$out" \
    || fail "par did not stop on the signal"
  grep -q "requeueing the job: par stopped with a checkpoint (exit 75 after SIGUSR1)" "$out" \
    || fail "the batch script did not requeue the job after par's exit 75"
  grep -q "start (restart 1)" "$out" || fail "no second start in the (appended) output"
  grep -q "resumed from .* at step [1-9]" "$out" || fail "the requeued run did not resume"
  grep -q "done: $2 steps" "$out" || fail "the training did not finish its $2 steps"
  grep -q "training complete" "$out" || fail "the batch script did not report completion"
  # (Every rank logs these.)
  grep -o "stopping after step [0-9]*" "$out" | uniq | sed "s/^/$me:   /"
  grep -o "resumed from .* at step [0-9]*" "$out" | uniq | sed "s/^/$me:   /"
}

# --- 1. srun --mpi=pmix, SLURM's own warning signal -------------------------------------------
# --requeue and --open-mode=append come from the script's #SBATCH lines (the checks for
# a second start in the one output file rely on the latter).
for try in 1 2 3; do
  name=srun$try
  out=$work/$name.out
  job=$(sbatch --parsable --chdir="$work" --job-name=par-test-srun --ntasks=2 --time=1 \
          --signal=B:USR1@10 --output="$out" \
          "$root/launch/slurm/par-train.sbatch" "${train[@]}" --steps "$steps" \
          --log-every $((steps / 10)) --out "$work/$name" 2>&1) || fail "sbatch: $job"
  job=${job%%;*}
  say "submitted job $job (srun --mpi=pmix, $steps steps, --time=1 --signal=B:USR1@10)"
  wait_job "$job"
  say "job $job: $state, exit code $exit_code, $restarts requeue(s), $job_s s," \
      "$(median_ms "$work/$name") ms/step; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  # Finished before SLURM's warning (or with it, during the last step): the machine ran
  # faster than at calibration. Size the training from the job's own speed and submit
  # again. A signal that is never acted on fails the third time, in check_cycle.
  if [[ $state == COMPLETED && $restarts == 0 ]] && ! grep -q "stopping after step" "$out" &&
     ((try < 3)); then
    ms=$(median_ms "$work/$name") || fail "no ms_per_step in $work/$name/metrics.jsonl"
    steps=$(steps_for "$target_s" "$ms")
    say "job $job finished before SLURM's warning signal ($ms ms/step): again with $steps steps"
    continue
  fi
  break
done
srun_job=$job srun_steps=$steps srun_run=$work/$name srun_s=$job_s
check_cycle "$job" "$steps"
grep -q "start (restart 0) .*: 2 task(s), srun" "$out" || fail "the job did not use srun"

# Its uninterrupted run, in the background while part 2 runs (part 2 does not depend on
# timing, and its requeue leaves the cores idle for a while).
uninterrupted base-srun "$srun_steps" exec &
bg=$!

# --- 2. mpirun inside the allocation, signal from scancel ---------------------------------------
# About 10 s of training (more while it shares the cores with the uninterrupted run above):
# the signal is sent once the first interval is logged. SLURM's answers (scontrol, scancel)
# can come late while four ranks keep both cores busy (once, scancel timed out after 10 s,
# hence its retries below), so a job that finished before the signal reached it is
# submitted again with three times the steps, as in part 1.
m_steps=$(steps_for 10 "$ms")
for try in 1 2 3; do
  name=mpirun$try
  out=$work/$name.out
  # PAR_KILL_TIMEOUT=1: mpirun's exit after a rank's 75 takes 2 s, not 10 (launch/LAUNCH.md).
  job=$(PAR_LAUNCHER=mpirun PAR_OVERSUBSCRIBE=1 PAR_KILL_TIMEOUT=1 \
        sbatch --parsable --chdir="$work" --job-name=par-test-mpirun --ntasks=2 --time=10 \
          --output="$out" "$root/launch/slurm/par-train.sbatch" "${train[@]}" \
          --steps "$m_steps" --log-every $((m_steps / 10)) --out "$work/$name" 2>&1) \
    || fail "sbatch: $job"
  job=${job%%;*}
  say "submitted job $job (mpirun, $m_steps steps)"
  t0=$(date +%s)
  # Training is under way (par's handler in place) once the first interval's loss is in the
  # run's metrics (the run's start row comes before its first step), which rank 0 writes
  # straight to the file; its log line reaches the job's output
  # through mpirun's forwarding, seconds later at times.
  # The file is looked at every 0.2 s; SLURM, slower to ask, every 2 s.
  polls=0 early=0
  until grep -qs '"loss"' "$work/$name/metrics.jsonl"; do
    if ((polls++ % 10 == 0)); then
      read_job "$job"
      job_ended && { early=1; break; }
    fi
    (($(date +%s) - t0 < deadline_s)) || fail "job $job did not start training in $deadline_s s"
    sleep 0.2
  done
  if ((early)); then
    [[ $state == COMPLETED ]] && ((try < 3)) || fail "job $job ended ($state) before it could be signalled"
  else
    # On a loaded machine slurmctld's forward to slurmd can time out ("Socket timed out on
    # send/recv operation") whether or not the signal arrived. The batch script writes its
    # own line on SIGUSR1 straight to the output (not through mpirun), so that line tells
    # which; a signal sent twice is harmless (the script and par act on the first).
    signalled() { grep -q "par-train.sbatch: .* SIGUSR1: asking the ranks" "$out"; }
    for s_try in 1 2 3; do
      scancel --batch --signal=USR1 "$job" && break
      for _ in $(seq 25); do signalled && break 2; sleep 0.2; done
      read_job "$job"
      job_ended && break
      ((s_try < 3)) || fail "scancel --batch --signal=USR1 $job (3 tries)"
      say "scancel --batch --signal=USR1 $job failed and the script shows no signal: again"
    done
    say "sent SIGUSR1 to the batch shell of job $job"
    wait_job "$job"
    say "job $job: $state, exit code $exit_code, $restarts requeue(s), $(($(date +%s) - t0)) s"
  fi
  if [[ $state == COMPLETED && $restarts == 0 ]] && ! grep -q "stopping after step" "$out" &&
     ((try < 3)); then
    m_steps=$((m_steps * 3))
    say "job $job finished before the signal reached par: again with $m_steps steps"
    continue
  fi
  break
done
mpirun_run=$work/$name
check_cycle "$job" "$m_steps"
grep -q "start (restart 0) .*: 2 task(s), mpirun" "$out" || fail "the job did not use mpirun"
out=""

wait "$bg" || fail "uninterrupted run: $(tail -n 20 "$work/base-srun.log")"
bg=""
uninterrupted base-mpirun "$m_steps" || fail "uninterrupted run: $(tail -n 20 "$work/base-mpirun.log")"

# --- same parameters as the uninterrupted runs -------------------------------------------------
for pair in "$srun_run base-srun" "$mpirun_run base-mpirun"; do
  read -r run base <<<"$pair"
  for r in "$run" "$work/$base"; do
    "$par" export --checkpoint "$(checkpoint_of "$r")" --out "$r.h5" >"$r.export.log" 2>&1 \
      || fail "par export of $r: $(cat "$r.export.log")"
  done
  h5diff "$work/$base.h5" "$run.h5" /params /params >"$work/h5diff.txt" 2>&1 \
    || fail "final parameters of $run differ from the uninterrupted run: $(head -n 20 "$work/h5diff.txt")"
  say "final parameters of $(basename "$run") equal the uninterrupted run's (h5diff /params, exact)"
done
say "PASSED in $(($(date +%s) - t_start)) s (srun job $srun_job: $srun_s s)"
