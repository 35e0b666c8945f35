#!/usr/bin/env python3
"""Damages a file par reads, many times over, and sorts what a par command then does.

Each round copies the file (with --dir, the folder that holds it: a checkpoint directory),
changes it once -- one bit flipped (flip), one byte replaced (byte), or cut short
(truncate) at a random offset -- and runs the command on the copy. The outcomes:

  same     exit 0, the same standard output as on the undamaged file (the damage hit bytes
           the command does not read, such as free space)
  error    exit 1 or 2 (the command's error line)
  silent   exit 0 with other output: damage read as if it were data
  crash    a signal (par's "died of ..." line or none), or a timeout

The exit status is 1 when a round crashed. Examples (from the repository root, after
building par):

  tools/fuzz_files.py --file runs/main/model.h5 --rounds 1000 -- build/launch/par inspect {file}
  tools/fuzz_files.py --file runs/main/data/val-00000.h5 --mode byte -- \\
      build/launch/par eval --checkpoint runs/main/model.h5 --data {file}
  tools/fuzz_files.py --dir --file runs/main/run/checkpoints/step-00000800/shard-00000.h5 \\
      -- build/launch/par inspect {dir}

{file} is the damaged copy's path, {dir} the folder that holds it.
"""
import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile


def damage(data, mode, rng):
    k = rng.randrange(len(data))
    b = bytearray(data)
    if mode == "flip":
        bit = rng.randrange(8)
        b[k] ^= 1 << bit
        return bytes(b), f"bit {bit} of byte {k} flipped"
    if mode == "byte":
        v = rng.randrange(256)
        b[k] = v
        return bytes(b), f"byte {k} set to {v}"
    return bytes(b[:k]), f"cut at byte {k}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", required=True, help="the file to damage")
    p.add_argument("--dir", action="store_true", help="copy the folder that holds it each round")
    p.add_argument("--mode", choices=["flip", "byte", "truncate"], default="flip")
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    a = p.parse_args()
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        p.error("give the command after --, with {file} or {dir} where the copy goes")
    data = open(a.file, "rb").read()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="par-fuzz-")
    src_dir, name = os.path.split(os.path.abspath(a.file))

    def run(folder):
        path = os.path.join(folder, name)
        args = [c.replace("{file}", path).replace("{dir}", folder) for c in cmd]
        try:
            r = subprocess.run(args, capture_output=True, text=True, errors="replace",
                               timeout=a.timeout)
        except subprocess.TimeoutExpired:
            return None, "", "timeout"
        # Paths of the copy, as the original's, so that outputs compare.
        return r.returncode, r.stdout.replace(folder, "{dir}"), r.stderr.replace(folder, "{dir}")

    ref_dir = os.path.join(work, "reference")
    shutil.copytree(src_dir, ref_dir) if a.dir else os.makedirs(ref_dir)
    if not a.dir:
        shutil.copy(a.file, ref_dir)
    ref_rc, ref_out, ref_err = run(ref_dir)
    if ref_rc != 0:
        sys.exit(f"fuzz_files: the command fails on the undamaged file ({ref_rc}):\n{ref_err}")
    counts = collections.Counter()
    examples = collections.defaultdict(list)
    try:
        for i in range(a.rounds):
            folder = os.path.join(work, "round")
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(src_dir, folder) if a.dir else os.makedirs(folder)
            damaged, what = damage(data, a.mode, rng)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(damaged)
            rc, out, err = run(folder)
            if rc is None or rc < 0 or rc > 2 or "died of" in err:
                kind = "crash"
            elif rc == 0:
                kind = "same" if out == ref_out else "silent"
            else:
                kind = "error"
            counts[kind] += 1
            last = (err.strip().splitlines() or [""])[-1][:240]
            if len(examples[kind]) < 3:
                examples[kind].append(f"{what}: exit {rc}: {last}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{a.rounds} rounds ({a.mode}) of {a.file}: " +
          ", ".join(f"{k} {counts[k]}" for k in ("same", "error", "silent", "crash")))
    for kind in ("crash", "silent", "error"):
        for e in examples[kind]:
            print(f"  {kind}: {e}")
    return 1 if counts["crash"] else 0


if __name__ == "__main__":
    sys.exit(main())
