#!/usr/bin/env bash
# Checks the CUDA backend on a GPU machine and measures it, in one call of at most BUDGET
# seconds (540, inside the device tool's 600 s a command): the timing runs of
# par_cuda_tests (matrix-product rates, the 100M config's cross-attention and its key
# splits), par_cuda_tests itself (every op and the whole model against the CPU backend),
# issue 14's and 17's targets, the same model in PyTorch, then `par bench` on the GPU
# configs in each precision, in a short table.
#
# The machine needs a GPU, its driver, CUDA 13's cuBLAS and NCCL (from a CUDA toolkit, or
# the nvidia-* Python packages that PyTorch brings), and nothing else: no Open MPI, HDF5,
# glog, Boost or network. Everything else comes in the bundle made beforehand, on the
# build machine, by tools/gpu_bundle.sh.
#
# Usage, from the repository root (the configs are read from configs/):
#   tools/gpu_bundle.sh        # on the build machine: build-gpu-bundle/bundle/par-gpu-bundle.tar.xz;
#                              # it prints the device command with the commit to expect
#   EXPECT_COMMIT=SHA tools/gpu_check.sh [ARCHIVE]   # on the GPU machine
# With this workplace's device tool: ONE run of "EXPECT_COMMIT=SHA tools/gpu_check.sh" (no
# .git travels there, so the commit is given) with carry ["build-gpu-bundle/bundle"] and
# timeout_s 600, then give the machine back; the logs come back in $OUT. That fits a
# session's 15 minutes with a machine's start. With less left (status's budget_left_s under
# about 750), set BUDGET to budget_left_s minus 210 (the start, the transfers, the warm wait
# after the call) and timeout_s to BUDGET + 60: the stages below shrink with it.
#
# The stages, in this order, each within what the budget leaves it:
#   1. the bundle's commit: another one than EXPECT_COMMIT (or, without it, than this
#      checkout's HEAD where .git is), or a bundle built from a tree with local changes,
#      exits 2 at once, before any GPU time is spent (ALLOW_STALE=1 runs it anyway);
#   2. the timing runs (CudaTiming.*: their lines are in the summary) and cuDNN's record
#      of the device (cudnn-device.json);
#   3. the tests, one process per suite (a kernel fault poisons only its own process),
#      TEST_JOBS at a time, each in its own log: the DeviceWait* suites first and alone
#      (they time waits), then the parameterized GPU suites, the other GPU suites (the
#      last listed, the newest, first), and the suites that the CPU machines run too; the
#      cuDNN tests again with the machine's other cuDNN (if it has two) among them. They
#      stop short of the budget's last RESERVE seconds; no suite starts with less than
#      20 s of that left, and one stopped at that end is reported "cut by the budget";
#   4. the targets (the 100M config in bf16 without key dropout: N = 131072, its profile,
#      fp32 keys and values, N = 1,048,576, decoding with and without graphs, its profile),
#      which leave TORCH_SLOT seconds for 5.;
#   5. the yardstick: the same model in PyTorch (bench/torch_reference.py; torch.compile
#      only if half its slot is left after the eager step and the attention);
#   6. the last targets (decoding without token tables, 16 samples of 4,000 tokens);
#   7. the bench table.
# A target or bench row starts only with MIN_RUN seconds left, else it is listed as
# skipped. summary.txt (rewritten after each stage from the tests on) and logs.tar.gz
# (packed after each stage and while the tests run) are in place should the call be cut.
#
# Settings (environment):
#   EXPECT_COMMIT the commit the bundle must be built from (gpu_bundle.sh prints it)
#   ALLOW_STALE   set: run a bundle of another commit or with local changes (a note says so)
#   BUDGET        seconds for the whole check, unpacking included (default 540)
#   RESERVE       the budget's last seconds that the tests leave to stages 4 to 7 (default
#                 half the budget)
#   PRECISIONS    precisions to bench (default "bf16 tf32 fp32")
#   ATTENTIONS    attention kernels to bench in bf16 (default "auto blocked": cuDNN where it
#                 applies, and par's own); tf32 and fp32 bench the first only (auto there
#                 is the blocked path). "fused" adds par's WMMA kernels.
#   CUDNN_LIBRARY the libcudnn.so.9 to use (default: the newest usable cuDNN 9 found: the
#                 CUDA toolkit's, the system's, PyTorch's nvidia-cudnn package; never 9.10.0
#                 or 9.10.1, which par refuses, nor one built for CUDA 12)
#   GPU_CONFIGS   configs to bench (default: every configs/gpu-*.ini; missing ones are noted)
#   BENCH_CMD     the bench command line; {par}, {config}, {precision} and {attention} are
#                 replaced. Default: "{par} bench --config {config} --device cuda
#                 --precision {precision} --attention {attention}
#                 --steps 3 --warmup 1".
#   TIMING_TIMEOUT seconds for the timing runs (90)
#   TEST_TIMEOUT  seconds for all the tests (300), SUITE_TIMEOUT for one suite (75),
#                 TEST_JOBS suites at a time (4; each with OMP_NUM_THREADS = cores / jobs
#                 unless set); SUITES_FIRST: suites (shell patterns) to run before the rest
#   SKIP_TESTS    set: no par_cuda_tests suites run (the timing runs and the rest still run)
#   TRAIN_TIMEOUT, DECODE_TIMEOUT  seconds for one training target (90), one decoding
#                 target (120); BENCH_TIMEOUT for one bench row (90)
#   MIN_RUN       seconds a target or bench row needs left to start (45)
#   TORCH_SLOT    seconds kept for the yardstick (90, or a third of RESERVE if less; it
#                 needs 30 to start)
#   CHECK_OUT     where the logs go (default $OUT when set, else build-gpu-bundle/check):
#                 summary.txt, and every log in logs.tar.gz
#   TORCH_REFERENCE  the yardstick's command (default: python3 bench/torch_reference.py
#                 --config configs/gpu-100m-131k.ini; --budget SECONDS is appended)
# The targets (tools/gpu_check.sh prints "targets:" lines): the 100M config at N = 131072
# with --cross-attend-dropout 0 (the work PyTorch's model does), the attention alone,
# N = 1,048,576, and cached decoding of 16 samples of one 130,068-token prompt (`par bench
# --decode 1000 [--num-samples 16]`: one sample, and the tokens/s of 16 samples together;
# and, last, 16 samples of 4,000 tokens each).
# Exit status: 0 when all tests passed, 1 when some failed or did not run, 2 on setup errors
# (a stale bundle among them).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)

archive=${1:-build-gpu-bundle/bundle/par-gpu-bundle.tar.xz}
precisions=${PRECISIONS:-bf16 tf32 fp32}
attentions=${ATTENTIONS:-auto blocked}
configs=${GPU_CONFIGS:-$(ls configs/gpu-*.ini 2>/dev/null)}
bench_cmd=${BENCH_CMD:-"{par} bench --config {config} --device cuda --precision {precision} --attention {attention} --steps 3 --warmup 1"}
budget=${BUDGET:-540}
# On the device machine ($OUT set) a command is stopped at 600 s, and what it has not yet
# written under $OUT is lost with it: never plan past 540 s there.
if [ -n "${OUT:-}" ] && [ "$budget" -gt 540 ]; then
  echo "gpu_check: BUDGET $budget: the device tool stops a command at 600 s; 540 used" >&2
  budget=540
fi
reserve=${RESERVE:-$((budget / 2))}
timing_timeout=${TIMING_TIMEOUT:-90}
test_timeout=${TEST_TIMEOUT:-300}
suite_timeout=${SUITE_TIMEOUT:-75}
test_jobs=${TEST_JOBS:-4}
min_suite=20  # a suite started with less is only killed, and says nothing
train_timeout=${TRAIN_TIMEOUT:-90}
decode_timeout=${DECODE_TIMEOUT:-120}
bench_timeout=${BENCH_TIMEOUT:-90}
min_run=${MIN_RUN:-45}
torch_min=30  # the yardstick's least: PyTorch's import and a few eager steps
grace=10  # timeout -k: what a process stopped at its limit may take to go
logs=${CHECK_OUT:-${OUT:-build-gpu-bundle/check}}
mkdir -p "$logs"
logs=$(cd "$logs" && pwd)

say() { echo "gpu_check: $*"; }
die() { echo "gpu_check: $*" >&2; exit 2; }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }
torch_slot=${TORCH_SLOT:-$(min 90 $((reserve / 3)))}
# Seconds a stage before the targets may take: at most $1, and never into the last
# $reserve seconds of the budget, which the targets and the yardstick keep (0: none left).
stage_limit() {
  local l=$((budget - reserve - SECONDS - grace))
  l=$(min "$l" "$1")
  [ "$l" -gt 0 ] || l=0
  echo "$l"
}
# Runs "$@" for at most stage_limit $1 seconds; status 124 without running it when no time
# is left. (timeout 0 would mean no limit at all.)
staged() {
  local lim
  lim=$(stage_limit "$1")
  shift
  [ "$lim" -gt 0 ] || return 124
  timeout -k "$grace" "$lim" "$@"
}
# Line-buffered standard output where coreutils' stdbuf is (par_cuda_tests line-buffers its
# own too): what a process printed is in its log even when it is stopped at its limit.
lb=()
command -v stdbuf > /dev/null && lb=(stdbuf -oL)

[ -f "$archive" ] || die "no bundle at $archive: run tools/gpu_bundle.sh on the build machine first (and carry build-gpu-bundle/bundle)"

# ---- unpack ----
work=$(mktemp -d "${TMPDIR:-/tmp}/par-gpu-check.XXXXXX")
# The detailed logs, packed into one archive in $logs as each stage ends and at exit (the
# device tool brings back at most 8 files); summary.txt lies beside it.
dlog=$work/logs
mkdir -p "$dlog"
# (tar's status 1: a log grew while it was read, which the next pack takes.)
# An archive over the device tool's 16 MiB would not come back at all: then cuDNN's own
# logs (never yet measured on a GPU) are left out of it.
pack() {
  tar -czf "$logs/logs.tar.gz.part" -C "$work" logs 2>/dev/null
  local rc=$?
  if [ $rc -le 1 ] && [ "$(stat -c %s "$logs/logs.tar.gz.part")" -gt $((15 << 20)) ]; then
    tar -czf "$logs/logs.tar.gz.part" -C "$work" --exclude='*.cudnn' \
        --exclude=cudnn-warnings.log logs 2>/dev/null
    rc=$?
  fi
  [ $rc -le 1 ] && mv -f "$logs/logs.tar.gz.part" "$logs/logs.tar.gz"
}
trap 'pack; rm -rf "$work"' EXIT
if command -v xz > /dev/null; then
  xz -dc "$archive" | tar -C "$work" -xf - || die "cannot unpack $archive"
else
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
    "$archive" "$work" || die "cannot unpack $archive (no xz, and Python could not either)"
fi
B=$work/par-gpu-bundle
par=$B/bin/par
tests=$B/bin/par_cuda_tests
[ -f "$B/MANIFEST" ] || die "$archive holds no par-gpu-bundle/MANIFEST: not a bundle of tools/gpu_bundle.sh"
say "bundle: $(head -1 "$B/MANIFEST")"

# ---- the bundle's commit: a bundle of another commit measures other code ----
# gpu_bundle.sh writes "commit: SHA" (older bundles: "from SHORT" in the first line). No
# .git travels to the device machine: there the commit to expect is given, EXPECT_COMMIT.
bundle_commit=$(sed -n 's/^commit: \([0-9a-f]\{7,40\}\).*/\1/p' "$B/MANIFEST" | head -1)
[ -n "$bundle_commit" ] ||
  bundle_commit=$(head -1 "$B/MANIFEST" | sed -n 's/.* from \([0-9a-f]\{7,\}\).*/\1/p')
expect=$(echo "${EXPECT_COMMIT:-}" | tr 'A-F' 'a-f')
expect_from="EXPECT_COMMIT"
if [ -z "$expect" ] && [ -n "$bundle_commit" ]; then
  expect=$(git -C "$repo" rev-parse HEAD 2>/dev/null || true)
  expect_from="this checkout"
fi
stale=""
if [ -n "$expect" ]; then
  if [ -z "$bundle_commit" ]; then
    stale="the bundle names no commit, $expect_from is ${expect:0:12}"
  elif [ "${expect#"$bundle_commit"}" = "$expect" ] && [ "${bundle_commit#"$expect"}" = "$bundle_commit" ]; then
    stale="the bundle was built from ${bundle_commit:0:12}, $expect_from is ${expect:0:12}"
  fi
elif [ -n "$bundle_commit" ]; then
  say "note: the bundle's commit ${bundle_commit:0:12} is not checked (no EXPECT_COMMIT, no .git)"
fi
if grep -q "local changes" "$B/MANIFEST"; then
  stale="${stale:+$stale; }the bundle was built from a tree with local changes"
fi
if [ -n "$stale" ]; then
  [ -n "${ALLOW_STALE:-}" ] || die "$stale: run tools/gpu_bundle.sh again from a clean checkout of the commit to check, or set ALLOW_STALE=1 to check this bundle anyway"
  say "note: $stale (ALLOW_STALE: checked anyway)"
fi

# ---- the GPU ----
gpu_name=$(timeout -k 5 20 nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
if [ -n "$gpu_name" ]; then
  say "GPU: $(timeout -k 5 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | head -1)"
  # An exclusive-process GPU takes one process at a time: suites side by side would fail.
  mode=$(timeout -k 5 20 nvidia-smi --query-gpu=compute_mode --format=csv,noheader 2>/dev/null | head -1)
  if [ -n "$mode" ] && [ "$mode" != Default ]; then
    say "compute mode $mode: the test suites run one at a time"
    test_jobs=1
  fi
else
  say "nvidia-smi found no GPU (the tests will say why CUDA sees none)"
fi

# ---- libraries: the bundle's, then the machine's CUDA libraries wherever they are ----
# (PyTorch, for the yardstick, keeps the machine's own library path.)
machine_ld_path=${LD_LIBRARY_PATH:-}
lib_path=$B/lib
# (libnvrtc: cuDNN's attention engines compile their kernels at run time.)
need=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libnvrtc.so.13)
site_dirs=$(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null || true)
for so in "${need[@]}"; do
  grep -q "$so " < <(ldconfig -p 2>/dev/null) && continue  # the loader finds it anyway
  found=""
  for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/lib \
           /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/$so" ] && { found=$d; break; }
  done
  if [ -z "$found" ]; then
    for sp in $site_dirs; do
      [ -d "$sp/nvidia" ] || continue
      hit=$(find "$sp/nvidia" -maxdepth 4 -name "$so" 2>/dev/null | head -1)
      [ -n "$hit" ] && { found=$(dirname "$hit"); break; }
    done
  fi
  if [ -n "$found" ]; then
    case ":$lib_path:" in *":$found:"*) ;; *) lib_path=$lib_path:$found ;; esac
  fi
done
export LD_LIBRARY_PATH=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# What is still missing may be in the bundle's fallback (libstdc++, libgcc_s, libcudart).
# (Not grep -q: under pipefail, ldd killed by the pipe's early close would fail the test.)
if ldd "$tests" "$par" 2>/dev/null | grep "not found" > /dev/null; then
  export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$B/fallback
fi
if ldd "$tests" "$par" | grep "not found" | sort -u > "$work/missing" && [ -s "$work/missing" ]; then
  cat "$work/missing" >&2
  die "libraries not found (above): install CUDA 13's cuBLAS/NCCL or set CUDA_HOME"
fi
# cuDNN (loaded by par at run time, PAR_CUDNN_LIBRARY): the newest usable cuDNN 9 of the
# machine, whose directory goes first on the library path so that the libraries it loads
# in turn (libcudnn_graph, the engines) come from the same release.
cudnn_probe() {  # "VERSION CUDART" of a libcudnn.so.9, e.g. "91400 13000" (CUDART 0: not said)
  LD_LIBRARY_PATH=$machine_ld_path python3 -c "
import ctypes, sys
l = ctypes.CDLL(sys.argv[1])
l.cudnnGetVersion.restype = ctypes.c_size_t
rt = 0
try:
    l.cudnnGetCudartVersion.restype = ctypes.c_size_t
    rt = l.cudnnGetCudartVersion()
except AttributeError:
    pass
print(l.cudnnGetVersion(), rt)" "$1" 2>/dev/null
}
cudnn_name() { echo "$(($1 / 10000)).$(($1 / 100 % 100)).$(($1 % 100))"; }  # 91400 -> 9.14.0
cudnn_candidates=()
for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/local/cuda/lib \
         /usr/lib/x86_64-linux-gnu; do
  [ -e "$d/libcudnn.so.9" ] && cudnn_candidates+=("$d/libcudnn.so.9")
done
sys_cudnn=$(ldconfig -p 2>/dev/null | awk '/libcudnn.so.9 / {print $NF; exit}')
[ -n "$sys_cudnn" ] && cudnn_candidates+=("$sys_cudnn")
# PyTorch's: nvidia/cudnn/lib (cu12 packages) or nvidia/cu13/lib (cu13), wherever it lies.
for sp in $site_dirs; do
  [ -d "$sp/nvidia" ] || continue
  while IFS= read -r hit; do cudnn_candidates+=("$hit"); done \
    < <(find "$sp/nvidia" -maxdepth 4 -name libcudnn.so.9 2>/dev/null | sort)
done
cudnn_lib=${CUDNN_LIBRARY:-}
cudnn_other=""
if [ -z "$cudnn_lib" ]; then
  best=0 other=0 seen=" "
  for c in "${cudnn_candidates[@]}"; do
    real=$(readlink -f "$c")
    case "$seen" in *" $real "*) continue ;; esac
    seen="$seen$real "
    read -r v rt < <(cudnn_probe "$real")
    [ -n "${v:-}" ] || { say "cuDNN at $real: cannot be loaded, not used"; continue; }
    case $v in
      91000|91001) say "cuDNN $(cudnn_name "$v") at $real: not used (par refuses 9.10.0 and 9.10.1)"; continue ;;
    esac
    if [ "$v" -lt 90000 ] || [ "$v" -ge 100000 ]; then
      say "cuDNN $v at $real: not cuDNN 9, not used"; continue
    fi
    if [ "${rt:-0}" -gt 0 ] && [ "$rt" -lt 13000 ]; then
      say "cuDNN $(cudnn_name "$v") at $real: built for CUDA $((rt / 1000)).$((rt % 1000 / 10)), not 13: not used"; continue
    fi
    say "cuDNN $(cudnn_name "$v") at $real"
    if [ "$v" -gt "$best" ]; then
      [ -n "$cudnn_lib" ] && other=$best cudnn_other=$cudnn_lib
      best=$v cudnn_lib=$real
    elif [ "$v" -lt "$best" ] && [ "$v" -gt "$other" ]; then
      other=$v cudnn_other=$real
    fi
  done
fi
if [ -n "$cudnn_lib" ]; then
  export PAR_CUDNN_LIBRARY=$cudnn_lib
  LD_LIBRARY_PATH=$(dirname "$cudnn_lib"):$LD_LIBRARY_PATH
  read -r v rt < <(cudnn_probe "$cudnn_lib")
  cudnn_in_use="$cudnn_lib ($(cudnn_name "${v:-0}"))"
  say "cuDNN in use: $cudnn_in_use"
  case ${v:-} in 91000|91001) say "WARNING: par refuses cuDNN 9.10.0 and 9.10.1 (CUDNN_LIBRARY)" ;; esac
else
  cudnn_in_use="none: the attention runs on par's own kernels"
  say "no usable cuDNN 9 found: the attention runs on par's own kernels"
fi
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
# par only initializes MPI under a launcher; should anything start it, stay alone.
export OMPI_MCA_ess_singleton_isolated=1

# ---- timings from par_cuda_tests, first: they are what the tests' time may not take ----
stage_times=("setup $SECONDS s")
mark() { stage_times+=("$1 $((SECONDS - $2)) s"); }  # stage, its start
say "timing runs (logs.tar.gz: logs/timing.log)"
s0=$SECONDS
timing_lim=$(stage_limit "$timing_timeout")
staged "$timing_timeout" ${lb[@]+"${lb[@]}"} "$tests" --gtest_color=no --gtest_also_run_disabled_tests \
  --gtest_filter='CudaTiming.*' > "$dlog/timing.log" 2>&1
timing_rc=$?
case $timing_rc in
  0) timing_note="" ;;
  124|137)
    if [ "$timing_lim" -le 0 ]; then timing_note="not run: out of time"
    elif [ "$timing_lim" -lt "$timing_timeout" ]; then timing_note="cut by the budget after $timing_lim s"
    else timing_note="stopped at TIMING_TIMEOUT ($timing_timeout s)"; fi ;;
  *) timing_note="exit status $timing_rc" ;;
esac
[ -z "$timing_note" ] || say "timing runs: $timing_note"
grep '^timing' "$dlog/timing.log" | sed 's/^timing /  /'
# cuDNN's description of this GPU: committed as tests/data/cudnn/<card>.json, it lets the
# CPU tests build plans for this device (CudnnGraphTest.BuildsPlansForRecordedDevices).
PAR_CUDNN_DEVICE_JSON="$dlog/cudnn-device.json" staged 30 "$tests" --gtest_color=no \
  --gtest_also_run_disabled_tests --gtest_filter='CudnnDeviceProperties.*' \
  > "$dlog/cudnn-device.log" 2>&1 || say "recording the device properties: exit status $?"
[ -s "$dlog/cudnn-device.json" ] && say "cuDNN device properties: logs/cudnn-device.json in logs.tar.gz"
mark timing "$s0"
pack

# ---- tests ----
# One process per test suite: a kernel fault poisons the CUDA context of its process, and
# must not take the other suites' results with it. TEST_JOBS suites at a time, each into
# its own log; tests.log is their logs in the order they started, once all have ended.
say "running par_cuda_tests suite by suite, $test_jobs at a time (logs.tar.gz: logs/tests.log)"
: > "$dlog/tests.log"
t0=$SECONDS
test_note=""
other_note=""
order=()
if [ -n "${SKIP_TESTS:-}" ]; then
  test_note="not run (SKIP_TESTS)"
else
  # "Suite." lines, each followed by its tests ("  Name", maybe "  # GetParam() = ...").
  # A suite whose tests are all DISABLED_ (the timings, the device record) is left out: it
  # would cost a process and run nothing. The order: the DeviceWait* suites (alone), then
  # SUITES_FIRST, the parameterized GPU suites, the other GPU suites, then the rest (which
  # the machines without a GPU run too), each group newest (last listed) first.
  timeout -k 5 60 "$tests" --gtest_list_tests > "$work/list.txt" 2>/dev/null
  mapfile -t order < <(awk -v first="${SUITES_FIRST:-}" '
    /^[A-Za-z0-9_\/]+\.( |$)/ { s = $1; sub(/\.$/, "", s); if (!(s in at)) { at[s] = ++n; name[n] = s }; next }
    /^  [A-Za-z0-9_\/]/ { if ($1 !~ /^DISABLED_/ && s !~ /(^|\/)DISABLED_/) live[s] = 1 }
    END {
      nf = split(first, pat, " ")
      for (i = n; i >= 1; i--) {
        s = name[i]
        if (!(s in live)) continue
        g = 5
        if (s ~ /^DeviceWait/) g = 0
        else if (s ~ /\// && s ~ /Cuda|Cudnn|Nccl/) g = 2
        else if (s ~ /Cuda|Cudnn|Nccl/) g = 3
        for (j = 1; j <= nf; j++) {
          re = pat[j]; gsub(/\./, "\\.", re); gsub(/\*/, ".*", re); gsub(/\?/, ".", re)
          if (g > 0 && s ~ ("^" re "$")) g = 1
        }
        printf "%d\t%06d\t%s\n", g, n - i, s
      }
    }' "$work/list.txt" | sort -t $'\t' -k1,1n -k2,2n | cut -f3)
  [ "${#order[@]}" -gt 0 ] || test_note="could not list the tests"
fi
# The machine's other cuDNN (say the system's 9.14 when PyTorch brings 9.19): par must run
# on either. Its run is one job among the suites, after the first wave.
if [ -n "$cudnn_other" ] && [ "${#order[@]}" -gt 0 ]; then
  i=0
  while [ "$i" -lt "${#order[@]}" ] && case ${order[$i]} in DeviceWait*) true ;; *) false ;; esac; do i=$((i + 1)); done
  i=$((i + test_jobs))
  [ "$i" -le "${#order[@]}" ] || i=${#order[@]}
  order=("${order[@]:0:$i}" "@other-cudnn" "${order[@]:$i}")
fi
jobs_dir=$dlog/suites  # each job's log while the tests run (packed with the rest meanwhile)
mkdir -p "$jobs_dir"
# OpenMP's threads (the CPU reference) shared among the suites that run together.
cores=$(nproc 2>/dev/null || echo 16)
omp=${OMP_NUM_THREADS:-$((cores / test_jobs > 0 ? cores / test_jobs : 1))}
# Starts job $1 (its number) for suite $2 with a limit of $3 seconds, in the background;
# when it ends, jobs_dir/$1.rc holds its exit status.
launch() {
  local id=$1 suite=$2 lim=$3 threads=$4
  local log=$jobs_dir/$id.log filter="$suite.*" env=()
  if [ "$suite" = "@other-cudnn" ]; then
    log=$dlog/tests-other-cudnn.log filter='*Cudnn*:*cudnn*'
    env=(PAR_CUDNN_LIBRARY="$cudnn_other" LD_LIBRARY_PATH="$(dirname "$cudnn_other"):$LD_LIBRARY_PATH")
  fi
  (
    # cuDNN's own warnings and errors (why it refused a graph or an engine), suite by suite.
    env ${env[@]+"${env[@]}"} OMP_NUM_THREADS="$threads" CUDNN_LOGLEVEL_DBG=2 \
      CUDNN_LOGDEST_DBG="$jobs_dir/$id.cudnn" \
      timeout -k "$grace" "$lim" ${lb[@]+"${lb[@]}"} "$tests" --gtest_color=no --gtest_filter="$filter" \
      > "$log" 2>&1
    echo $? > "$jobs_dir/$id.rc"
  ) &
}
ended() { find "$jobs_dir" -name '*.rc' | wc -l; }
started=0
not_started=()
last_pack=$SECONDS
jobs_end=0  # when the last job started will have ended, killed if need be
# Waits until fewer than $1 jobs run, or until every job started has had its time and its
# kill's (one stuck past its kill, in the driver say, is left behind); packs the logs
# every 30 s meanwhile.
await() {
  while [ $((started - $(ended))) -ge "$1" ] && [ "$SECONDS" -lt "$jobs_end" ]; do
    sleep 0.2
    if [ $((SECONDS - last_pack)) -ge 30 ]; then pack; last_pack=$SECONDS; fi
  done
}
for suite in ${order[@]+"${order[@]}"}; do
  alone=""
  case $suite in DeviceWait*) alone=1 ;; esac
  # A free place (all of them, for a suite that runs alone).
  if [ -n "$alone" ]; then await 1; else await "$test_jobs"; fi
  # The time the tests have left: TEST_TIMEOUT since they began, up to the budget's reserve.
  window=$(stage_limit $((test_timeout - (SECONDS - t0))))
  if [ "$window" -lt "$min_suite" ]; then
    [ "$suite" = "@other-cudnn" ] || not_started+=("$suite")
    continue
  fi
  cap=$suite_timeout
  [ "$suite" = "@other-cudnn" ] && cap=60
  lim=$(min "$window" "$cap")
  started=$((started + 1))
  # What ended it, should it be stopped: its own limit, or the end of the tests' time.
  printf '%s\t%s\t%s\n' "$suite" "$lim" "$([ "$lim" -lt "$cap" ] && echo budget || echo own)" \
    > "$jobs_dir/$started.job"
  threads=$omp
  [ -n "$alone" ] && threads=${OMP_NUM_THREADS:-$cores}
  launch "$started" "$suite" "$lim" "$threads"
  [ $((SECONDS + lim + grace + 5)) -gt "$jobs_end" ] && jobs_end=$((SECONDS + lim + grace + 5))
  [ -z "$alone" ] || await 1
done
await 1
t1=$SECONDS
# The logs in the order the suites started; what stopped a suite short.
: > "$dlog/cudnn-warnings.log"
for ((id = 1; id <= started; id++)); do
  IFS=$'\t' read -r suite lim why < "$jobs_dir/$id.job"
  rc=$(cat "$jobs_dir/$id.rc" 2>/dev/null || echo none)
  log=$jobs_dir/$id.log
  if [ -s "$jobs_dir/$id.cudnn" ]; then
    { if [ "$suite" = "@other-cudnn" ]; then echo "== the cuDNN tests with $cudnn_other"; else echo "== $suite"; fi
      cat "$jobs_dir/$id.cudnn"; } >> "$dlog/cudnn-warnings.log"
  fi
  if [ "$suite" = "@other-cudnn" ]; then
    log=$dlog/tests-other-cudnn.log
    other_passed=$(grep -cE '^\[       OK \] .* \([0-9]+ ms\)$' "$log")
    other_failed=$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$log")
    other_note="$other_passed passed, $other_failed failed"
    case $rc in
      0) ;;
      1) [ "$other_failed" -gt 0 ] ||
           test_note="${test_note:+$test_note; }the other cuDNN's run exited 1 with no failed test counted" ;;
      none) other_note="$other_note, did not end even when killed"
            test_note="${test_note:+$test_note; }the other cuDNN's run did not end" ;;
      124|137) if [ "$why" = budget ]; then other_note="$other_note, cut by the budget after $lim s"
               else other_note="$other_note, stopped at its $lim s"; fi
               test_note="${test_note:+$test_note; }the cuDNN tests with the other cuDNN: $other_note" ;;
      *) other_note="$other_note, ended with status $rc ($(tail -1 "$log" | cut -c1-120))"
         test_note="${test_note:+$test_note; }the other cuDNN's run ended with status $rc" ;;
    esac
    # Only tests that ran and failed are failures; a run cut short is a run not finished.
    [ "$other_failed" -gt 0 ] && test_note="${test_note:+$test_note; }$other_failed cuDNN tests failed with $cudnn_other"
    say "with the other cuDNN ($cudnn_other): $other_note"
    continue
  fi
  cat "$log" >> "$dlog/tests.log"
  case $rc in
    0) ;;
    1) # failures counted below; none counted is a failure outside a test (a suite's set-up)
       grep -qE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$log" ||
         test_note="${test_note:+$test_note; }$suite exited 1 with no failed test counted (a failure outside its tests: see tests.log)" ;;
    none) test_note="${test_note:+$test_note; }$suite did not end even when killed (stuck in the driver?)" ;;
    124|137)
      if [ "$why" = budget ]; then test_note="${test_note:+$test_note; }$suite cut by the budget (it had the tests' last $lim s)"
      else test_note="${test_note:+$test_note; }$suite timed out (SUITE_TIMEOUT $lim s)"; fi ;;
    *) test_note="${test_note:+$test_note; }$suite ended with status $rc ($(tail -1 "$log" | cut -c1-120))" ;;
  esac
done
rm -rf "$jobs_dir"
if [ -n "$cudnn_other" ] && [ -z "$other_note" ]; then
  if [ -n "${SKIP_TESTS:-}" ]; then other_note="not run (SKIP_TESTS)"
  elif [ "${#order[@]}" -eq 0 ]; then other_note="not run"
  else
    other_note="not run: out of time"
    test_note="${test_note:+$test_note; }the cuDNN tests with the other cuDNN not run for time"
  fi
fi
if [ "${#not_started[@]}" -gt 0 ]; then
  names=$(printf '%s, ' "${not_started[@]:0:8}")
  names=${names%, }
  [ "${#not_started[@]}" -gt 8 ] && names="$names, ..."
  test_note="${test_note:+$test_note; }out of time before ${#not_started[@]} suites ($names)"
fi
passed=$(grep -cE '^\[       OK \] .* \([0-9]+ ms\)$' "$dlog/tests.log")
failed=$(grep -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$dlog/tests.log")
skipped=$(grep -cE '^\[  SKIPPED \] .* \([0-9]+ ms\)$' "$dlog/tests.log")
# On a GPU machine nothing skips: a skip means CUDA saw no device, and the check failed.
[ "$skipped" -gt 0 ] && test_note="${test_note:+$test_note; }$skipped skipped (no GPU visible to CUDA?)"
test_rc=0
{ [ "$failed" -gt 0 ] || [ -n "$test_note" ]; } && test_rc=1
if [ "$failed" -gt 0 ]; then
  say "failures (details in tests.log):"
  grep -E '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$dlog/tests.log" | head -40
  grep -B1 -A8 -E ': Failure$' "$dlog/tests.log" | head -120
fi
say "tests: $passed passed, $failed failed, $skipped skipped in $((t1 - t0)) s${test_note:+ ($test_note)}"
mark tests "$t0"
pack

# ---- the issue's targets (the 100M config in bf16, PyTorch's work: no key dropout) ----
: > "$dlog/bench.log"
: > "$dlog/bench.tsv"
: > "$dlog/targets.txt"
: > "$dlog/torch.jsonl"
target_config=configs/gpu-100m-131k.ini
torch_cmd=${TORCH_REFERENCE:-"python3 bench/torch_reference.py --config $target_config"}
torch_note="not run"
# Seconds kept for the yardstick while it is still to come: none where the default
# yardstick cannot run (no PyTorch), so the targets get that time.
keep=0
[ -f "$target_config" ] && [ "$torch_slot" -ge "$torch_min" ] && keep=$torch_slot
if [ -z "${TORCH_REFERENCE:-}" ] && ! LD_LIBRARY_PATH=$machine_ld_path python3 -c \
    'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' 2>/dev/null; then
  keep=0
  torch_slot=0
  torch_note="not run: no PyTorch (python3 -c 'import torch')"
fi
# Why a run stopped at its limit of $2 seconds: $3 "budget" (what the budget had left) or
# "own" (its own limit, $4 the setting); $1 its log.
stopped() {
  local last
  last=$(grep -v '^\s*$' "$1" | tail -1 | cut -c1-100)
  if [ "$3" = budget ]; then echo "cut by the budget after $2 s${last:+: $last}"
  else echo "timed out after $2 s ($4; hung?)${last:+: $last}"; fi
}
run_target() {  # label, extra options: one bench, its JSON line and profile into targets.txt
  local label=$1; shift
  local cap=$train_timeout setting=TRAIN_TIMEOUT
  case " $* " in *" --decode "*) cap=$decode_timeout setting=DECODE_TIMEOUT ;; esac
  local left=$((budget - SECONDS - grace - keep))
  if [ "$left" -lt "$min_run" ]; then
    echo "$label	skipped: out of time (BUDGET=$budget s)" >> "$dlog/targets.txt"
    return
  fi
  local lim why=own
  lim=$(min "$left" "$cap")
  [ "$lim" -lt "$cap" ] && why=budget
  # 5 steps after 2 of warm-up unless the extra options say (par takes an option once).
  local steps="--steps 5 --warmup 2"
  case " $* " in *" --steps "*) steps="" ;; esac
  local cmd="$par bench --config $target_config --device cuda --precision bf16 --cross-attend-dropout 0 $steps $*"
  say "target: $cmd"
  echo "==== $cmd" >> "$dlog/bench.log"
  timeout -k "$grace" "$lim" ${lb[@]+"${lb[@]}"} bash -c "$cmd" > "$work/one.log" 2>&1
  local rc=$?
  cat "$work/one.log" >> "$dlog/bench.log"
  local json
  json=$(grep '^{' "$work/one.log" | tail -1)
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "$label	$(stopped "$work/one.log" "$lim" "$why" "$setting")" >> "$dlog/targets.txt"
    pack
    return
  fi
  if [ $rc -ne 0 ] || [ -z "$json" ]; then
    echo "$label	failed (exit $rc): $(grep -v '^\s*$' "$work/one.log" | tail -1 | cut -c1-120)" >> "$dlog/targets.txt"
    pack
    return
  fi
  # The cross-attention's own time, from the profile when there is one.
  local attn
  attn=$(awk '/attention_(forward|backward) \(cross\)/ {s += $1} END {if (s > 0) printf "%.2f", s}' "$work/one.log")
  echo "$label	$json	${attn:-}" >> "$dlog/targets.txt"
  # The profiles' tables in the summary: only the runs made for them (the output that
  # comes back is short).
  case $label in
    *-profile) grep -E '^(model|step|profile|  )' "$work/one.log" | head -40 > "$dlog/profile-$label.txt" ;;
  esac
  pack
}
# ---- the yardstick: the same model in PyTorch, on this GPU, in this run ----
# (bench/torch_reference.py: eager and compiled steps, the attention alone; DESIGN: GPU
# speed is judged against PyTorch with FlashAttention on the same card, in the same run.)
# Its slot is kept from the targets before it; torch.compile runs only if half the slot
# is left after the eager step and the attention.
run_yardstick() {
  keep=0
  local left=$((budget - SECONDS - grace))
  if [[ $torch_note == "not run: no PyTorch"* ]]; then
    :
  elif [ ! -f "$target_config" ]; then
    torch_note="not run: no $target_config"
  elif [ "$left" -lt "$torch_min" ] || [ "$torch_slot" -lt "$torch_min" ]; then
    torch_note="skipped: out of time (BUDGET=$budget s)"
  else
    local lim why=own
    lim=$(min "$left" "$torch_slot")
    [ "$lim" -lt "$torch_slot" ] && why=budget
    say "yardstick: $torch_cmd --budget $lim (logs.tar.gz: logs/torch.log)"
    LD_LIBRARY_PATH=$machine_ld_path timeout -k "$grace" "$lim" bash -c "$torch_cmd --budget $lim" \
      > "$dlog/torch.log" 2>&1
    local rc=$?
    grep '^{' "$dlog/torch.log" > "$dlog/torch.jsonl"
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      torch_note=$(stopped "$dlog/torch.log" "$lim" "$why" TORCH_SLOT)
    else
      torch_note="exit $rc: $(grep -v '^{' "$dlog/torch.log" | grep -v '^\s*$' | tail -1 | cut -c1-160)"
    fi
  fi
  pack
}

# ---- par bench ----
bench_table() {
  local config p attn label left lim why cmd rc json
  for config in $configs; do
    for p in $precisions; do
    for attn in $attentions; do
      # Outside bf16, auto is the blocked path: one run of it says enough.
      [ "$p" != bf16 ] && [ "$attn" != "${attentions%% *}" ] && continue
      label="$p/$attn"
      if [ ! -f "$config" ]; then
        printf '%s\t%s\t%s\n' "$config" "$label" "config not found" >> "$dlog/bench.tsv"
        continue
      fi
      left=$((budget - SECONDS - grace))
      if [ "$left" -lt "$min_run" ]; then  # the targets' threshold: start-up alone takes seconds
        printf '%s\t%s\t%s\n' "$config" "$label" "skipped: out of time (BUDGET=$budget s)" >> "$dlog/bench.tsv"
        continue
      fi
      lim=$(min "$left" "$bench_timeout")
      why=own
      [ "$lim" -lt "$bench_timeout" ] && why=budget
      cmd=${bench_cmd//\{par\}/$par}
      cmd=${cmd//\{config\}/$config}
      cmd=${cmd//\{precision\}/$p}
      cmd=${cmd//\{attention\}/$attn}
      say "bench: $cmd"
      echo "==== $cmd" >> "$dlog/bench.log"
      timeout -k "$grace" "$lim" ${lb[@]+"${lb[@]}"} bash -c "$cmd" > "$work/one.log" 2>&1
      rc=$?
      cat "$work/one.log" >> "$dlog/bench.log"
      json=$(grep '^{' "$work/one.log" | tail -1)
      if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        printf '%s\t%s\t%s\n' "$config" "$label" "$(stopped "$work/one.log" "$lim" "$why" BENCH_TIMEOUT)" >> "$dlog/bench.tsv"
      elif [ $rc -ne 0 ] || [ -z "$json" ]; then
        printf '%s\t%s\t%s\n' "$config" "$label" "failed (exit $rc): $(grep -v '^\s*$' "$work/one.log" | tail -1 | cut -c1-100)" >> "$dlog/bench.tsv"
      else
        printf '%s\t%s\tJSON\t%s\n' "$config" "$label" "$json" >> "$dlog/bench.tsv"
      fi
      pack  # each row as it comes: the call may be stopped before the table ends
    done
    done
  done
}

# ---- summary ----
summary() {
  echo "== par GPU check: ${gpu_name:-no GPU} =="
  echo "bundle: $(head -1 "$B/MANIFEST")"
  echo "tests:  $passed passed, $failed failed, $skipped skipped in $((t1 - t0)) s ${test_note:+($test_note)}"
  echo "cuDNN:  $cudnn_in_use${cudnn_other:+; with $cudnn_other: ${other_note:-not run}}"
  [ -z "$timing_note" ] || echo "timing: $timing_note"
  # Where the time went: for the next check's settings.
  echo "time:   $(printf '%s, ' "${stage_times[@]}" | sed 's/, $//'); $SECONDS s of BUDGET $budget"
  grep '^timing' "$dlog/timing.log" | sed 's/^timing /timing: /'
  LD_LIBRARY_PATH=$machine_ld_path python3 tools/gpu_summary.py bench "$dlog/bench.tsv"
  LD_LIBRARY_PATH=$machine_ld_path python3 tools/gpu_summary.py targets "$dlog/targets.txt" "$dlog/torch.jsonl" "$torch_note"
  # Which paths the backend took (cuDNN or not, keys read in place, cuBLASLt's epilogue),
  # as its log lines said them in the targets' runs: each message once, with its count.
  echo "--- the backend's paths (the targets' logs)"
  grep -hE "cuDNN|cuBLASLt|in place|widen" "$dlog/bench.log" | sed 's/^[IWEF][0-9]\{4,8\} [^]]*\] //' |
    sed 's/; plan built in [0-9]* ms.*$//' | sort | uniq -c | sort -rn | head -20
  # What building cuDNN's plans cost (it compiles their kernels at run time; each process
  # builds each shape once): the first steps of a run pay it.
  grep -ho "plan built in [0-9]* ms" "$dlog/bench.log" | awk '{ n++; t += $4; if ($4 > m) m = $4 }
    END { if (n) printf "  cuDNN plans built: %d, %.1f s in all, the longest %d ms\n", n, t / 1000, m }'
  for f in "$dlog"/profile-*.txt; do
    [ -s "$f" ] || continue
    echo "--- $(basename "$f" .txt)"
    cat "$f"
  done
}
# summary.txt as far as the check has come (should the call be cut short).
interim_summary() {
  summary > "$logs/summary.txt.part" 2>/dev/null && mv -f "$logs/summary.txt.part" "$logs/summary.txt"
}
interim_summary

s0=$SECONDS
if [ -f "$target_config" ]; then
  run_target n131k
  run_target n131k-profile --profile
  # The keys and values in fp32 as before --kv-storage (auto is bf16 here): what bf16
  # storage saves in time and memory.
  run_target n131k-kvfp32 --kv-storage fp32
  run_target n1m --context-length 1048576 --steps 3 --warmup 1
  # Generation from one prompt of 130,068 tokens, cached: one sample, and 16 decoded together.
  run_target decode1 --decode 1000
  run_target decode16 --decode 1000 --num-samples 16
  # The same step launched kernel by kernel: what the step graphs save.
  run_target decode1-nographs --decode 1000 --cuda-graphs off
  # Where a decoding step's time goes (each op synchronized, so the sum exceeds the step).
  run_target decode1-profile --decode 300 --profile
fi
mark targets "$s0"
interim_summary
s0=$SECONDS
run_yardstick
mark yardstick "$s0"
interim_summary
s0=$SECONDS
if [ -f "$target_config" ]; then
  # Without token tables (absolute positions: a key depends on its position too) a step
  # reads the whole cross cache: in bfloat16 (auto under bf16) and in float32.
  run_target decode1-abs --decode 300 --position-encoding absolute
  run_target decode1-abs-kvfp32 --decode 300 --position-encoding absolute --kv-storage fp32
  # A longer generation of 16 samples: their own (generated) keys grow to 4,000 each, read
  # as cache rows on the GPU (its token-table kernel declines the samples' batched call).
  run_target decode16-long --decode 4000 --num-samples 16
fi
mark "last targets" "$s0"
interim_summary
s0=$SECONDS
bench_table
mark bench "$s0"

summary | tee "$logs/summary.txt"

[ "$test_rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ] && exit 0
exit 1
