#!/usr/bin/env bash
# Runs par under Open MPI's mpirun on one host, a list of hosts or a hostfile, and makes
# preemption clean: SIGTERM, SIGINT and SIGUSR1 sent to this script become one SIGUSR1 to
# mpirun, which forwards it to every rank; the ranks finish their step, write a checkpoint
# and exit 75 ("requeue me"). The script waits for that and exits with mpirun's status, so
# 75 comes through to whatever runs it (a batch script, a retry loop). When mpirun was
# signalled itself (a signal to the whole process group, a batch system's kill) it exits 1
# even though the ranks stopped with a checkpoint; par's rank 0 then has written
# $PAR_STOP_FILE, and the script exits 75 all the same.
#
#   launch/par-mpirun.sh [options] [--] PAR_ARGS...
#
#   launch/par-mpirun.sh -n 8 --hostfile hosts -- train --config c.ini --data 'd/*.h5' \
#       --out runs/x --dp 2 --sp 2 --tp 2 --threads 4 --resume auto
#
# Options (each also an environment variable):
#   -n, --np N            ranks (PAR_NP; default: mpirun's: the SLURM allocation's tasks,
#                         or the hostfile's slots, or the cores of this host)
#   --hostfile FILE       Open MPI hostfile: "node1 slots=4" lines (PAR_HOSTFILE)
#   --host LIST           hosts, "node1:4,node2:4" (PAR_HOSTS)
#   --par PATH            the par binary (PAR; default: par on PATH, else build/launch/par
#                         of this checkout)
#   --threads-per-rank T  cores bound to each rank (PAR_THREADS_PER_RANK; default: the
#                         value of par's --threads if given on the command line); with T,
#                         ranks are mapped T cores apart and bound to them, and
#                         OMP_NUM_THREADS=T; without it, ranks are not bound
#   --oversubscribe       more ranks than cores (a laptop, CI): --oversubscribe, no
#                         binding, OMP_WAIT_POLICY=passive, OMP_NUM_THREADS=1, and Open MPI
#                         yields while it waits (PAR_OVERSUBSCRIBE=1); give par --threads 1
#   --kill-timeout S      Open MPI's odls_base_sigkill_timeout (PAR_KILL_TIMEOUT, default
#                         5): when mpirun ends a job (it was sent SIGTERM/SIGINT itself, or
#                         a rank exited non-zero), it sends the remaining ranks SIGCONT, S s
#                         later SIGTERM (par checkpoints), S s later SIGKILL
#   --mpirun-arg ARG      one more argument for mpirun (repeatable; PAR_MPIRUN_ARGS: more,
#                         split on spaces)
#   --dry-run             print the mpirun command instead of running it
#
#   PAR_STOP_FILE         where rank 0 notes that it stopped with a checkpoint (default: a
#                         temporary file, removed at the end; rank 0 must see it: a shared
#                         directory when rank 0 runs on another host than this script)
#
# Environment passed to remote ranks: OMP_*, OPENBLAS_*, GLOG_*, PATH, LD_LIBRARY_PATH
# (when set), PAR_STOP_FILE. As root, --allow-run-as-root is added.
set -uo pipefail

me="par-mpirun"
say() { echo "$me: $*" >&2; }
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

np=${PAR_NP:-}
hostfile=${PAR_HOSTFILE:-}
hosts=${PAR_HOSTS:-}
par=${PAR:-}
tpr=${PAR_THREADS_PER_RANK:-}
oversubscribe=${PAR_OVERSUBSCRIBE:-0}
kill_timeout=${PAR_KILL_TIMEOUT:-5}
dry_run=0
extra=()
# shellcheck disable=SC2206
[[ -n ${PAR_MPIRUN_ARGS:-} ]] && extra=(${PAR_MPIRUN_ARGS})

# An option's value: $2 of "OPTION VALUE ...", or one message and status 2.
value() {
  (($# >= 2)) && [[ -n $2 ]] || { say "$1 needs a value"; exit 2; }
  echo "$2"
}
while (($#)); do
  case $1 in
    -n|-np|--np) np=$(value "$@") || exit; shift 2 ;;
    --hostfile) hostfile=$(value "$@") || exit; shift 2 ;;
    --host|--hosts) hosts=$(value "$@") || exit; shift 2 ;;
    --par) par=$(value "$@") || exit; shift 2 ;;
    --threads-per-rank) tpr=$(value "$@") || exit; shift 2 ;;
    --oversubscribe) oversubscribe=1; shift ;;
    --kill-timeout) kill_timeout=$(value "$@") || exit; shift 2 ;;
    --mpirun-arg) (($# >= 2)) || { say "--mpirun-arg needs a value"; exit 2; }
                  extra+=("$2"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) say "unknown option $1 (par's own options go after --)"; exit 2 ;;
    *) break ;;
  esac
done
(($#)) || { say "no par command given (e.g. -- train --config ...)"; exit 2; }
[[ -z $np || $np =~ ^[1-9][0-9]*$ ]] || { say "the number of ranks must be a positive number, not '$np'"; exit 2; }
[[ $kill_timeout =~ ^[0-9]+$ ]] || { say "the kill timeout must be whole seconds, not '$kill_timeout'"; exit 2; }
kill_timeout=$((10#$kill_timeout))  # "08" is not octal

if [[ -z $par ]]; then
  if command -v par >/dev/null; then
    par=$(command -v par)
  else
    par=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/build/launch/par
  fi
fi
[[ -x $par ]] || { say "par binary not found or not executable: '$par' (set PAR or --par)"; exit 2; }

# par's --threads, when given on its command line, sets the binding width.
if [[ -z $tpr ]]; then
  args=("$@")
  for ((i = 0; i < ${#args[@]}; ++i)); do
    case ${args[i]} in
      --threads) tpr=${args[i + 1]:-} ;;
      --threads=*) tpr=${args[i]#--threads=} ;;
    esac
  done
fi
[[ -z $tpr || $tpr =~ ^[0-9]+$ ]] || { say "threads per rank must be a number, not '$tpr'"; exit 2; }
if [[ $oversubscribe == 1 && $tpr != 1 ]]; then
  say "warning: --oversubscribe without par's --threads 1: each rank may start a thread per core"
fi

cmd=(mpirun)
[[ -n $np ]] && cmd+=(-np "$np")
[[ -n $hostfile ]] && cmd+=(--hostfile "$hostfile")
[[ -n $hosts ]] && cmd+=(--host "$hosts")
[[ $(id -u) -eq 0 ]] && cmd+=(--allow-run-as-root)
if [[ $oversubscribe == 1 ]]; then
  # Ranks share cores: OpenMP threads must sleep, not spin, while they wait.
  # (Open MPI's progress loop yields too.)
  export OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1
  cmd+=(--oversubscribe --bind-to none)
elif [[ -n $tpr && $tpr -gt 0 ]]; then
  # Neighbouring ranks (tensor-parallel partners) on neighbouring cores of one node.
  export OMP_NUM_THREADS=$tpr
  cmd+=(--map-by "slot:PE=$tpr" --bind-to core)
else
  cmd+=(--bind-to none)  # Open MPI would bind each rank (and all its threads) to one core
fi
# When mpirun ends the job itself (SIGTERM or SIGINT straight to mpirun, or a rank exiting
# non-zero, e.g. the first of the ranks to exit 75), it sleeps S s after SIGCONT and S s after
# SIGTERM before SIGKILL, even if the ranks are gone by then: S bounds a checkpoint's time
# in the first case, and costs up to 2 S at the end of a stopped run in the second.
cmd+=(--mca odls_base_sigkill_timeout "$kill_timeout")
if ((dry_run)); then
  export PAR_STOP_FILE=${PAR_STOP_FILE:-"(a temporary file)"}
elif [[ -z ${PAR_STOP_FILE:-} ]]; then
  PAR_STOP_FILE=$(mktemp "${TMPDIR:-/tmp}/par-stop.XXXXXX") || { say "cannot make a temporary file"; exit 2; }
  export PAR_STOP_FILE
  trap 'rm -f "$PAR_STOP_FILE"' EXIT
else
  : >"$PAR_STOP_FILE" || { say "cannot write PAR_STOP_FILE $PAR_STOP_FILE"; exit 2; }
fi
for v in $(compgen -e); do
  case $v in
    OMP_*|OPENBLAS_*|GLOG_*|PATH|LD_LIBRARY_PATH|PAR_STOP_FILE) cmd+=(-x "$v") ;;
  esac
done
cmd+=("${extra[@]}" "$par" "$@")

if ((dry_run)); then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi

child=""
stop=""
forward() {
  # A second Ctrl-C: the user will not wait for the checkpoint (a hung file system, say).
  # mpirun, signalled itself, ends the job: its ranks are killed after its kill timeout
  # (twice --kill-timeout), done with their checkpoint or not; the last complete one stays.
  if [[ $1 == SIGINT && $stop == SIGINT ]]; then
    say "second SIGINT: ending the job (SIGTERM to mpirun $child: the ranks are killed within $((2 * kill_timeout)) s, a checkpoint not done by then is dropped)"
    [[ -n $child ]] && kill -TERM "$child" 2>/dev/null
    return
  fi
  if [[ -z $stop ]]; then
    say "$1: asking the ranks to checkpoint and stop (SIGUSR1 to mpirun $child)"
  fi
  stop=$1
  [[ -n $child ]] && kill -USR1 "$child" 2>/dev/null
}
trap 'forward SIGTERM' TERM
trap 'forward SIGINT' INT
trap 'forward SIGUSR1' USR1

if [[ -t 0 ]]; then
  # From a terminal, Ctrl-C goes to the whole foreground process group: mpirun would get
  # SIGINT itself and end the job (exit 1). In a session of its own it gets only our SIGUSR1.
  # (Not under a batch system, whose process tracking may rely on the process group.)
  setsid "${cmd[@]}" </dev/null &
else
  "${cmd[@]}" &
fi
child=$!
[[ -n $stop ]] && kill -USR1 "$child" 2>/dev/null  # a signal came before mpirun started
# `wait` returns early (status > 128) whenever a trapped signal arrives: wait again until
# mpirun is gone, then once more for its real status.
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
done
wait "$child"
rc=$?
if [[ $rc -ne 75 && $rc -ne 0 && -s $PAR_STOP_FILE ]]; then
  say "mpirun exited with status $rc, but the ranks stopped with a checkpoint ($(cat "$PAR_STOP_FILE")): exit 75"
  rc=75
fi
if [[ $rc -eq 75 ]]; then
  # Rank 0 notes "75 step N" with its checkpoint; a new run stopped before its first step
  # has none ("75 step 0").
  where=$(cat "$PAR_STOP_FILE" 2>/dev/null)
  where=${where#75 }
  [[ $where == "step 0" ]] && where=""
  say "par stopped early (exit 75)${where:+ with a checkpoint of $where}: run the same command again (with --resume auto) to continue"
elif [[ -n $stop && $rc -ne 0 ]]; then
  say "mpirun exited with status $rc after $stop"
elif [[ $rc -gt 128 ]]; then
  say "mpirun exited with status $rc: a rank was killed by signal $((rc - 128)) (out of memory? see the lines above and the system log)"
elif [[ $rc -ne 0 ]]; then
  say "mpirun exited with status $rc (the error is above)"
fi
exit "$rc"
