#!/bin/bash
# Checks that two builds of par compute the same bits: a refactoring must not change results.
#
# Usage: tools/bit_identity.sh OLD_PAR NEW_PAR [WORK_DIR]
#   e.g. build the old commit into /tmp/old-build, then
#        tools/bit_identity.sh /tmp/old-build/launch/par build/launch/par
#
# Each binary runs the same CPU workload: copy-task training with residual and cross-attend
# dropout (checkpoints at two steps), the same on 2 sequence-parallel ranks, a 2,048-token
# context (the tall linear and fused attention kernels) on one rank with 2 threads and on 2
# tensor-parallel ranks, then eval, sample and export. Then every logged loss, gradient norm
# and learning rate (17 digits), every checkpoint tensor (as exact hex floats), the
# manifests (less their version and checksums), the export, the eval numbers and the sampled text
# must be equal. Exits 1 naming what differs. Needs mpirun and h5dump (tools/setup.sh).
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,14p "$0"; exit 2; }
OLD=$(realpath "$1"); NEW=$(realpath "$2"); WORK=${3:-$(mktemp -d)}
cd "$(dirname "$0")/.."

workload() {  # PAR OUT
  local PAR=$1 OUT=$2
  rm -rf "$OUT"; mkdir -p "$OUT"
  local MPI="mpirun --oversubscribe --allow-run-as-root -np 2"
  $PAR prep copy --out $OUT/data --length 64 --examples 400 --seed 7 >$OUT/prep.log 2>&1
  local C="--config configs/copy-tiny.ini --data $OUT/data/train-*.h5 --steps 120 --log-every 20 --threads 1"
  $PAR train $C --dropout 0.1 --cross-attend-dropout 0.25 --checkpoint-every 60 --out $OUT/run1 >$OUT/train1.log 2>&1
  $MPI $PAR train $C --sp 2 --out $OUT/run2 >$OUT/train2.log 2>&1
  $PAR prep copy --out $OUT/data2k --length 2049 --examples 24 --seed 5 >$OUT/prep2.log 2>&1
  local L="--config configs/tiny.ini --data $OUT/data2k/train-*.h5 --context-length 2048 --num-latents 64 --d-model 64 --cross-heads 4 --self-heads 4 --batch-size 2 --steps 4 --log-every 1 --dropout 0.1 --cross-attend-dropout 0.2"
  $PAR train $L --threads 2 --out $OUT/run3 >$OUT/train3.log 2>&1
  $MPI $PAR train $L --tp 2 --threads 1 --out $OUT/run4 >$OUT/train4.log 2>&1
  $PAR eval --checkpoint $OUT/run1 --data "$OUT/data/val-*.h5" --threads 1 >$OUT/eval.json 2>$OUT/eval.log
  $PAR sample --checkpoint $OUT/run1 --prompt "hello world, hello" --tokens 40 --seed 3 --threads 1 >$OUT/sample.txt 2>$OUT/sample.log
  $PAR export --checkpoint $OUT/run1 --out $OUT/export.h5 >$OUT/export.log 2>&1
}

workload "$OLD" "$WORK/old"
workload "$NEW" "$WORK/new"
A=$WORK/old; B=$WORK/new; bad=0
same() { if "$@" >/dev/null 2>&1; then echo "same  $what"; else echo "DIFF  $what"; bad=1; fi; }
numbers() {  # metrics.jsonl without the timings, and without the start rows (written since cb4589e)
  python3 -c "import json,sys
for l in open(sys.argv[1]):
  d=json.loads(l)
  if 'event' in d: continue
  [d.pop(k,None) for k in ('tokens_per_s','targets_per_s','ms_per_step')]; print(json.dumps(d,sort_keys=True))" "$1"
}
for r in run1 run2 run3 run4; do what="$r losses, gradient norms, learning rates"; same diff <(numbers $A/$r/metrics.jsonl) <(numbers $B/$r/metrics.jsonl); done
for f in $(cd $A && find run1 run2 run3 run4 -name '*.h5' | sort) export.h5; do
  what=$f; same diff <(h5dump -m %a $A/$f | tail -n +2) <(h5dump -m %a $B/$f | tail -n +2); done
# Manifests without their version line and checksums, which the manifest version decides
# (version 3 hashes with the standard FNV-1a basis); the tensors are compared above.
manifest() { sed -e '/^par-checkpoint /d' -e '/^checksum /d' -e 's/ [0-9a-f]\{16\}$//' "$1"; }
for f in $(cd $A && find run1 run2 run3 run4 -name manifest.txt | sort); do
  what=$f; same diff <(manifest $A/$f) <(manifest $B/$f); done
for f in eval.json sample.txt; do what=$f; same cmp $A/$f $B/$f; done
[ $bad = 0 ] && echo "bit-identical ($WORK)" || echo "results differ ($WORK)"
exit $bad
