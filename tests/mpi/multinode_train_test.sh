#!/bin/bash
# `par train` as a multi-node job: layout (dp, sp, tp) = (2, 2, 1) with two ranks on each of
# two test hosts (network namespaces, TCP between them; tools/netns_mpirun.sh), against
# the same training in one process. The losses of every step and the final model's
# evaluation must agree to float32 rounding.
#
#   multinode_train_test.sh PAR
#
# Exits 77 (CTest: skipped) when not root or when network namespaces cannot be made here.
set -uo pipefail

par=${1:?usage: multinode_train_test.sh PAR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive

skip() { echo "multinode_train_test: SKIPPED: $*"; exit 77; }
[[ $(id -u) -eq 0 ]] || skip "needs root to create network namespaces"
command -v ip >/dev/null || skip "the ip command (iproute2) is missing"
ip netns list >/dev/null 2>&1 || skip "'ip netns' is not available"
unshare --net --uts true 2>/dev/null || skip "cannot create network/UTS namespaces here"

work=$(mktemp -d)
trap '"$root/tools/netns_hosts.sh" down >/dev/null 2>&1; rm -rf "$work"' EXIT
fail() { echo "multinode_train_test: FAILED: $*"; exit 1; }

"$par" prep copy --out "$work/data" --length 65 --examples 120 --val-examples 8 >/dev/null \
  || fail "prep"
train=(train --config "$root/configs/tiny.ini" --data "$work/data/train-*.h5" --steps 4
       --log-every 1 --batch-size 4 --threads 1)
"$par" "${train[@]}" --out "$work/one" 2>"$work/one.log" || fail "single process: $(cat "$work/one.log")"
timeout -k 10 150 "$root/tools/netns_mpirun.sh" --hosts 2 --slots 2 -- \
  -np 4 "$par" "${train[@]}" --out "$work/four" --dp 2 --sp 2 >"$work/four.log" 2>&1 \
  || fail "4 ranks on 2 hosts: $(cat "$work/four.log")"

grep -q "ranks on 2 host(s): parhost1 \[ranks 0,1; local 0,1\], parhost2 \[ranks 2,3; local 0,1\]" \
  "$work/four.log" || fail "the ranks did not run two on each host: $(grep 'ranks on' "$work/four.log")"
for run in one four; do
  "$par" eval --checkpoint "$work/$run" --data "$work/data/val-*.h5" 2>/dev/null \
    | tail -n 1 >"$work/$run.eval"
done
python3 - "$work" <<'PY' || exit 1
import json, re, sys
work = sys.argv[1]
def losses(run):
    return [float(m) for m in re.findall(r'"loss": ([^,}]+)', open(f"{work}/{run}/metrics.jsonl").read())]
one, four = losses("one"), losses("four")
ok = len(one) == 4 and len(four) == 4 and all(abs(a - b) <= 1e-6 * abs(a) for a, b in zip(one, four))
e1, e4 = (json.loads(open(f"{work}/{r}.eval").read()) for r in ("one", "four"))
ok = ok and e1["tokens"] == e4["tokens"] and abs(e1["loss_nats"] - e4["loss_nats"]) <= 1e-5 * e1["loss_nats"]
print(f"multinode_train_test: losses one process {one}")
print(f"multinode_train_test: losses (2,2,1) on 2 hosts {four}")
print(f"multinode_train_test: eval {e1['loss_nats']} vs {e4['loss_nats']}: {'ok' if ok else 'FAILED'}")
sys.exit(0 if ok else 1)
PY
