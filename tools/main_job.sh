#!/usr/bin/env bash
# The main job: sets up and builds par, makes a data set (the copy task at an 8,192-token
# context: 4,096 random bytes, then the same bytes again, so every answer lies 4,096
# tokens back), trains a model on it on two MPI ranks with the context split between
# them (sequence parallel), stops, resumes from the checkpoint on another layout (data
# parallel) as a preempted job would, evaluates it, lets it continue held-out prompts,
# exports the weights and draws the loss curves. About 4 minutes on 2 cores from a fresh
# clone, the first build of par 2 of them (README, "The two commands"). Output goes to
# runs/main (OUT=... to change); an earlier runs/main is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh par  # the binary (and its CUDA plugin), not the tests

par=build/launch/par
out=${OUT:-runs/main}
rm -rf "$out"
mkdir -p "$out"
start=$(date +%s)

echo "== data: the copy task, examples of 4,096 random bytes, the same again, 2 EOS"
$par prep copy --out "$out/data" --length 8194 --examples 1500 --val-examples 8 --seed 1
# The warm-up: the same distance back, but only the last 64 copies and the 64 bytes they
# repeat are kept (the rest is PAD, which attention skips): a model that has not yet
# learned to copy finds the answer among 128 inputs instead of 8,192, and learns in a few
# hundred steps what on the whole task takes thousands (docs/performance.md, "The main job").
$par prep copy --out "$out/warmup" --length 8192 --half 4096 --keep 64 --examples 1200 \
  --val-examples 1 --seed 2

# Two ranks on two cores: one thread each, and idle OpenMP threads that sleep instead of
# spinning (--oversubscribe: some machines report fewer slots than cores).
mpirun=(mpirun -np 2 --oversubscribe -x OMP_WAIT_POLICY=passive)
[ "$(id -u)" -eq 0 ] && mpirun+=(--allow-run-as-root)
train=("${mpirun[@]}" $par train --config configs/copy-8k.ini --out "$out/run" --threads 1)
whole=(--data "$out/data/train-*.h5" --val-data "$out/data/val-*.h5")

echo "== training 1/3: the warm-up, 2 ranks, sequence parallel (each holds 4,096 of the 8,192 inputs)"
"${train[@]}" --data "$out/warmup/train-*.h5" --steps 350 --sp 2
echo "== training 2/3: the whole task, resumed from the checkpoint, sequence parallel"
"${train[@]}" "${whole[@]}" --steps 450 --sp 2 --resume auto
echo "== training 3/3: resumed from the checkpoint on another layout: 2 ranks, data parallel"
"${train[@]}" "${whole[@]}" --steps 500 --dp 2 --resume auto
trained=$(date +%s)

echo "== evaluation: the copied half of the validation examples"
# --checkpoint takes a checkpoint directory or a run directory (its newest checkpoint).
$par eval --checkpoint "$out/run" --data "$out/data/val-*.h5" --batch-size 16 \
  --score-positions 4097:8192 --max-tokens 8192 | tee "$out/eval.log"
$par export --checkpoint "$out/run" --out "$out/model.h5"

echo "== generation: the first 4,097 tokens of validation examples as prompts"
for ex in 0 1 2 3; do
  # Positions 0..4095 are random, 4096..8191 repeat them, then 2 EOS: the prompt ends with
  # the first repeated token, and the next 4,095 tokens should repeat tokens 1..4095.
  $par sample --checkpoint "$out/run" --prompt-shard "$out/data/val-00000.h5" \
    --prompt-begin $((ex * 8194)) --prompt-length 4097 --tokens 4095 --temperature 0 \
    --format json 2>/dev/null | tail -n 1
done > "$out/samples.jsonl"
tools/plot_runs.py "$out/run" --out "$out/loss.png" \
  --title "copy task, N = 8,192: warm-up, then the whole task (sp 2, then dp 2)" > /dev/null

python3 - "$out/eval.log" "$out/samples.jsonl" "$start" "$trained" <<'PY'
import json, sys, time
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
samples = [json.loads(line) for line in open(sys.argv[2])]
print()
print(f"What it learned: {100*r['accuracy']:.1f}% of {r['tokens']} copied tokens of the validation")
print(f"examples predicted exactly, each from the byte 4,096 tokens back (chance: {100/256:.1f}%);")
print(f"loss on them {r['bits_per_token']:.3f} bits/token.")
right = total = 0
for s in samples:
    p, g = s["prompt"], s["generated"]
    right += sum(a == b for a, b in zip(g, p[1:4096]))
    total += 4095
    print(f"  prompt ...{' '.join(map(str, p[-6:]))} -> generated {' '.join(map(str, g[:8]))} ...")
speed = sum(len(s["generated"]) for s in samples) / sum(len(s["generated"]) / s["tokens_per_s"] for s in samples)
print(f"Greedy generation (cached decoding): {right} of {total} tokens copied correctly "
      f"({100*right/total:.1f}%), at {speed:.0f} tokens/s.")
start, trained = int(sys.argv[3]), int(sys.argv[4])
print(f"Data and training {trained - start} s; everything after the build {int(time.time()) - start} s.")
PY
echo "weights: $out/model.h5   loss curves: $out/loss.png   log: $out/run/train.log"
