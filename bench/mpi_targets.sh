#!/usr/bin/env bash
# The distributed-training benchmark targets, measured with `par bench` under mpirun:
#   1. per-rank peak memory at N = 131072 (cpu-131k) with sp=2 <= 60% of the sp=1 figure;
#   2. sp=2 (one thread per rank) runs a cpu-131k step in <= 0.6x the time of sp=1 with
#      one thread;
#   3. communication volume per step and rank for sp and tp, at two context lengths (the
#      sequence-parallel volume must not depend on N).
# Usage: bench/mpi_targets.sh [par binary]   (build first: tools/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
par=${1:-build/launch/par}
steps=${STEPS:-3}
mpirun=(mpirun --oversubscribe -x OMP_WAIT_POLICY=passive -x OMP_NUM_THREADS=1)
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)

bench() {  # ranks, args -> the JSON line of par bench
  local np=$1; shift
  if [ "$np" -eq 1 ]; then "$par" bench --threads 1 --steps "$steps" "$@" | tail -n 1
  else "${mpirun[@]}" -np "$np" "$par" bench --threads 1 --steps "$steps" "$@" | tail -n 1; fi
}
one=$(bench 1 --config configs/cpu-131k.ini)
sp2=$(bench 2 --config configs/cpu-131k.ini --sp 2)
tp2=$(bench 2 --config configs/cpu-131k.ini --tp 2)
sp2_16k=$(bench 2 --config configs/cpu-131k.ini --sp 2 --context-length 16384)
tp2_16k=$(bench 2 --config configs/cpu-131k.ini --tp 2 --context-length 16384)

python3 - "$one" "$sp2" "$tp2" "$sp2_16k" "$tp2_16k" <<'PY'
import json, sys
one, sp2, tp2, sp2_16k, tp2_16k = (json.loads(a) for a in sys.argv[1:6])
mib = lambda b: b / 2**20
print(f"{'run (1 thread per rank)':32s} {'ms/step':>9s} {'peak MiB':>9s} {'sp MiB':>8s} {'tp MiB':>8s} {'grads MiB':>9s}")
for name, r in [("cpu-131k, 1 rank", one), ("cpu-131k, sp=2", sp2), ("cpu-131k, tp=2", tp2),
                ("cpu-131k at N=16384, sp=2", sp2_16k), ("cpu-131k at N=16384, tp=2", tp2_16k)]:
    c = r.get("comm_bytes", {})
    print(f"{name:32s} {r['ms_per_step']:9.1f} {r['peak_rss_mib_max']:9.0f} {mib(c.get('sp', 0)):8.3f} "
          f"{mib(c.get('tp', 0)):8.3f} {mib(c.get('dp_sp', 0)):9.3f}")
mem = sp2["peak_rss_mib_max"] / one["peak_rss_mib_max"]
speed = sp2["ms_per_step"] / one["ms_per_step"]
same_sp = sp2["comm_bytes"]["sp"] == sp2_16k["comm_bytes"]["sp"]
same_tp = tp2["comm_bytes"]["tp"] == tp2_16k["comm_bytes"]["tp"]
print()
for name, ok, value in [
    ("sp=2 peak memory per rank <= 60% of sp=1", mem <= 0.6, f"{100*mem:.0f}%"),
    ("sp=2 step time <= 0.6x sp=1 (1 thread each)", speed <= 0.6, f"{speed:.2f}x"),
    ("sp volume independent of N (16384 vs 131072)", same_sp, f"{mib(sp2['comm_bytes']['sp']):.3f} MiB"),
    ("tp volume independent of N (16384 vs 131072)", same_tp, f"{mib(tp2['comm_bytes']['tp']):.3f} MiB"),
]:
    print(f"{'met    ' if ok else 'NOT MET'}  {name}: {value}")
PY
