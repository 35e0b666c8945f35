#!/usr/bin/env bash
# The main job: sets up and builds par, makes a small data set (the copy task: random
# bytes, then the same bytes again), trains a model on it on two MPI ranks with periodic
# checkpoints -- the first half with the context split over the ranks (sequence
# parallel), then, as a preempted job would, resuming from the checkpoint on another
# layout (data parallel) -- evaluates it, exports the weights, and shows what it learned.
# A few minutes on 2 cores. Output goes to runs/main (OUT=... to change); an earlier
# runs/main is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh

par=build/launch/par
out=${OUT:-runs/main}
rm -rf "$out"
mkdir -p "$out"

echo "== data: the copy task, 256-token examples"
$par prep copy --out "$out/data" --length 256 --examples 4000 --seed 1

# Two ranks on two cores: one thread each, and idle OpenMP threads that sleep instead of
# spinning (--oversubscribe: some machines report fewer slots than cores).
mpirun=(mpirun -np 2 --oversubscribe -x OMP_WAIT_POLICY=passive)
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)

echo "== training, first half: 2 ranks, sequence parallel (checkpoints every 500 steps)"
"${mpirun[@]}" $par train --config configs/copy.ini --data "$out/data/train-*.h5" \
  --val-data "$out/data/val-*.h5" --out "$out/run" --steps 750 --sp 2 --threads 1
echo "== training, resumed from the checkpoint to the end: 2 ranks, data parallel"
"${mpirun[@]}" $par train --config configs/copy.ini --data "$out/data/train-*.h5" \
  --val-data "$out/data/val-*.h5" --out "$out/run" --resume auto --dp 2 --threads 1

echo "== evaluation on the validation shards"
# --checkpoint takes a checkpoint directory or a run directory (its newest checkpoint).
$par eval --checkpoint "$out/run" --data "$out/data/val-*.h5" --batch-size 8 | tee "$out/eval.log"
$par export --checkpoint "$out/run" --out "$out/model.h5"

echo "== generation: the first 128 tokens of validation examples as prompts"
for ex in 0 1 2 3; do
  # Positions 0..126 are random, 127..253 repeat them, then 2 EOS: the prompt ends with the
  # first repeated token, and the next 126 tokens should repeat tokens 1..126.
  $par sample --checkpoint "$out/run" --prompt-shard "$out/data/val-00000.h5" \
    --prompt-begin $((ex * 256)) --prompt-length 128 --tokens 126 --temperature 0 \
    --format json 2>/dev/null | tail -n 1
done > "$out/samples.jsonl"

python3 - "$out/eval.log" "$out/samples.jsonl" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
samples = [json.loads(line) for line in open(sys.argv[2])]
# Each 256-token example is 127 random bytes, the same 127 again, and 2 EOS: the 127
# random bytes (one of them the start of the next example) cannot be predicted, except by
# chance (1 in 256); the other 129 targets can. Block evaluation scores every token of the
# stream once.
ceiling = (129 + 127 / 256) / 256
print()
print(f"What it learned: {100*r['accuracy']:.1f}% of {r['tokens']} validation tokens predicted")
print(f"exactly (at most {100*ceiling:.1f}% can be: the copied half, the EOS, and chance);")
print(f"a model that had not learned to copy gets {100/256:.1f}% by chance.")
print(f"Loss {r['loss_nats']:.3f} nats/token ({r['bits_per_token']:.3f} bits).")
right = total = 0
for s in samples:
    p, g = s["prompt"], s["generated"]
    right += sum(a == b for a, b in zip(g, p[1:127]))
    total += 126
    print(f"  prompt ...{' '.join(map(str, p[-6:]))} -> generated {' '.join(map(str, g[:8]))} ...")
print(f"Greedy generation (cached decoding): {right} of {total} tokens copied correctly "
      f"({100*right/total:.1f}%), at {samples[0]['tokens_per_s']:.0f} tokens/s.")
PY
echo "weights: $out/model.h5   log: $out/run/train.log   metrics: $out/run/metrics.jsonl"
