#!/usr/bin/env python3
"""The folders of par's sources and the includes between them, checked against their order.

Usage: tools/layers.py [ROOT]   (default: this checkout)

Each folder may include its own files and those of the folders below it, never one beside
or above it:

    launch/ bench/                the CLI and the process runtime; benchmarks
    train/                        the training engine
    checkpoint/                   checkpoints and exported models
    data/  kernels/  parallel/    shards; the backends (Ops); communicators (MPI)
    core/                         the model, written against Ops and Communicator

Prints every include that breaks the order (file:line), the folder-level cycles, the
includes between folders and the largest source files; exits 1 when an include breaks the
order or folders form a cycle. Tests (tests/) are not sources here: they may include
anything. Includes are read as `#include "folder/file"` lines, resolved from the root
(the project's include directory) or beside the including file.
"""
import collections
import os
import re
import sys

LEVELS = {"core": 0, "data": 1, "kernels": 1, "parallel": 1, "checkpoint": 2, "train": 3,
          "launch": 4, "bench": 4}
SOURCES = (".cpp", ".h", ".cu", ".cuh")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def sources(root):
    for folder in LEVELS:
        for d, _, names in os.walk(os.path.join(root, folder)):
            for n in sorted(names):
                if n.endswith(SOURCES):
                    yield os.path.relpath(os.path.join(d, n), root)


def includes(root, path, known):
    with open(os.path.join(root, path), errors="replace") as f:
        for number, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = m.group(1)
            beside = os.path.normpath(os.path.join(os.path.dirname(path), target))
            if target in known:
                yield number, target
            elif beside in known:
                yield number, beside


def cycles(edges):
    """Strongly connected components of more than one folder (Tarjan)."""
    graph = collections.defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(LEVELS):
        if v not in index:
            visit(v)
    return out


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    files = list(sources(root))
    known = set(files)
    edges = collections.Counter()
    wrong = []
    for path in files:
        source = path.split("/")[0]
        for number, target in includes(root, path, known):
            folder = target.split("/")[0]
            if folder == source:
                continue
            edges[(source, folder)] += 1
            if LEVELS[folder] >= LEVELS[source]:
                wrong.append(f"{path}:{number}: includes {target} ({folder}/ is not below {source}/)")
    found = cycles(edges)
    print("includes between folders:")
    for (a, b), n in sorted(edges.items()):
        print(f"  {a}/ -> {b}/  {n}")
    print(f"includes against the order: {len(wrong)}")
    for w in wrong:
        print("  " + w)
    print(f"folder cycles: {len(found)}" + "".join(f"  {' <-> '.join(c)}" for c in found))
    sizes = []
    for path in files:
        with open(os.path.join(root, path), errors="replace") as f:
            sizes.append((sum(1 for _ in f), path))
    sizes.sort(reverse=True)
    print("largest files (lines): " + ", ".join(f"{p} {n}" for n, p in sizes[:8]))
    return 1 if wrong or found else 0


if __name__ == "__main__":
    sys.exit(main())
