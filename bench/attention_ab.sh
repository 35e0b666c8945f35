#!/usr/bin/env bash
# Times the fused CPU attention (kernels/cpu/attention_avx512.cpp and the headers it
# includes) of an older commit against the working tree, both compiled into one program
# and run in alternating order, round by round. On a shared machine whole training steps
# vary by ±20–30%; a change of a few percent in one kernel shows only this way.
#   bench/attention_ab.sh REV [keys 131072] [threads 2] [rounds 8] [queries 256] [heads 8]
#                         [head_dim 32] [old k_block] [new k_block]   (0: the default)
# (REV = HEAD with two key block sizes compares those on the same kernels.)
# Needs g++ and OpenBLAS's headers (tools/setup.sh installs both); builds in a temporary
# directory with the flags of a native Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/attention_ab.sh REV [keys] [threads] [rounds] [queries] [heads] [head_dim]}
shift
git rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "attention_ab: unknown revision '$rev'" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/old"
git archive "$rev" core kernels | tar -x -C "$tmp/old"
flags=(-std=c++20 -O3 -DNDEBUG -march=native -fopenmp -fno-math-errno -fno-trapping-math -w
       -I/usr/include/x86_64-linux-gnu/openblas-openmp)
old_flags=()
[ -f "$tmp/old/kernels/cpu/workspace.h" ] || old_flags=(-DAB_NO_WORKSPACE)
g++ "${flags[@]}" "${old_flags[@]}" -Dpar=par_old -DAB_ENTRY=ab_run_old -I"$tmp/old" -I. \
  -c bench/attention_ab/variant.cpp -o "$tmp/old.o" &
g++ "${flags[@]}" -Dpar=par_new -DAB_ENTRY=ab_run_new -I. -c bench/attention_ab/variant.cpp -o "$tmp/new.o" &
wait %1 && wait %2
g++ "${flags[@]}" bench/attention_ab/main.cpp "$tmp/old.o" "$tmp/new.o" -o "$tmp/attention_ab"
echo "old: $(git log -1 --format='%h %s' "$rev" | cut -c1-80)"
echo "new: working tree at $(git log -1 --format=%h HEAD)$(git diff --quiet HEAD -- core kernels || echo ' (modified)')"
"$tmp/attention_ab" "$@"
