#!/usr/bin/python3
"""Loss curves of par training runs as a PNG.

Usage: tools/plot_runs.py RUN [RUN...] --out FILE.png [--title TEXT]

RUN is a run directory of `par train` (or its metrics.jsonl). Two panels: training loss in
bits/token against steps and against training tokens (steps x batch-size x context-length,
each part of the run with its own batch size), validation loss as points, and the learning
rate on a second axis. Each start of `par train` writes a row {"step": S, "event": "start",
"resumed_from": DIR or null, "batch_size": B, "context_length": N}: the rows logged before
it past step S belong to a line of steps that a resume abandoned (a rollback) and are left
out, and each resume is marked. (Rows written before any such row, by an older par, take
the batch size of config.ini and the resumes of train.log.) Uses Debian's python3-matplotlib (hence
/usr/bin/python3: tools/setup.sh installs it there). Bad input exits 2 with one message
naming the file and line.
"""
import argparse
import json
import math
import os
import re
import sys


class InputError(Exception):
    pass


def fail(message):
    print(f"plot_runs.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Run:
    """One run's metrics: training rows and validation rows by step (the last logged wins)."""

    def __init__(self, path):
        if os.path.isdir(path):
            self.dir, self.metrics = path, os.path.join(path, "metrics.jsonl")
        else:
            self.dir, self.metrics = os.path.dirname(path) or ".", path
        self.name = os.path.basename(os.path.normpath(self.dir))
        if not os.path.isfile(self.metrics):
            raise InputError(f"{self.metrics} does not exist (give a run directory of `par train`)")
        self.train, self.val = {}, {}
        self.segments = []  # (first step, tokens per step) of each start, in step order
        self.resumes = []
        self._rows_before_start = False  # training rows before the first start row
        with open(self.metrics, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    self._row(line, f"{self.metrics} line {n}")
        if not self.train:
            raise InputError(f"{self.metrics} holds no training rows (lines with \"step\" and \"loss\")")
        first = self.segments[0][0] if self.segments else None
        if first is None or self._rows_before_start:
            # Rows written before start rows (a run begun by an older par, perhaps resumed
            # by a newer one): their part takes config.ini's batch size (or, without it, the
            # first start row's) and train.log's resumes.
            try:
                per_step = self._tokens_per_step()
            except InputError:
                if first is None:
                    raise
                per_step = self.segments[0][1]
            self.segments.insert(0, (0, per_step))
            self.resumes = sorted(set(
                [r for r in self._resumes() if first is None or r < first] + self.resumes))

    def tokens(self, step):
        """Training tokens after `step` steps: each part of the run at its own batch size."""
        total, (begin, per_step) = 0, self.segments[0]
        for next_begin, next_per_step in self.segments[1:]:
            if next_begin >= step:
                break
            total += (next_begin - begin) * per_step
            begin, per_step = next_begin, next_per_step
        return total + (step - begin) * per_step

    def _start(self, row, where):
        step = row["step"]
        if not self.segments and any(s <= step for s in self.train):
            self._rows_before_start = True
        for key in ("batch_size", "context_length"):
            if not isinstance(row.get(key), int) or row[key] < 1:
                raise InputError(f"{where}: a start row needs a positive integer \"{key}\"")
        # What was logged past this step belongs to the line of steps this start abandoned.
        self.train = {s: v for s, v in self.train.items() if s <= step}
        self.val = {s: v for s, v in self.val.items() if s <= step}
        self.segments = [seg for seg in self.segments if seg[0] < step]
        self.segments.append((step, row["batch_size"] * row["context_length"]))
        self.resumes = [r for r in self.resumes if r < step]
        if row.get("resumed_from") is not None:
            self.resumes.append(step)

    def _row(self, line, where):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where} is not JSON ({e.msg}): {line.strip()[:80]!r}")
        if not isinstance(row, dict):
            raise InputError(f"{where} is not a JSON object: {line.strip()[:80]!r}")
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise InputError(f"{where} has no step (a non-negative integer \"step\")")
        if row.get("event") == "start":
            self._start(row, where)
        elif "loss" in row:
            for key in ("loss", "lr"):
                if not number(row.get(key)):
                    raise InputError(f"{where}: a training row needs a finite number \"{key}\"")
            if self.train and max(self.train) >= step:
                # A resume from an earlier checkpoint: what was logged from this step on
                # belongs to the abandoned continuation.
                self.train = {s: v for s, v in self.train.items() if s < step}
                self.val = {s: v for s, v in self.val.items() if s < step}
            self.train[step] = (row["loss"] / math.log(2), row["lr"])
        elif "val_loss" in row:
            if not number(row["val_loss"]):
                raise InputError(f"{where}: \"val_loss\" is not a finite number")
            self.val[step] = row["val_loss"] / math.log(2)
        else:
            raise InputError(f"{where} is neither a training row (\"loss\") nor a validation "
                             "row (\"val_loss\")")

    def _tokens_per_step(self):
        config = os.path.join(self.dir, "config.ini")
        values = {}
        if os.path.isfile(config):
            for line in open(config, encoding="utf-8", errors="replace"):
                m = re.match(r"\s*([\w-]+)\s*=\s*(\S+)", line)
                if m:
                    values[m.group(1)] = m.group(2)
        try:
            return int(values["batch-size"]) * int(values["context-length"])
        except (KeyError, ValueError):
            raise InputError(f"{config} does not give batch-size and context-length (the "
                             "run directory's config.ini, written by `par train`), needed "
                             "for the tokens axis")

    def _resumes(self):
        log = os.path.join(self.dir, "train.log")
        if not os.path.isfile(log):
            return []
        found = re.findall(r"resumed from .+? at step (\d+)", open(log, errors="replace").read())
        return sorted({int(s) for s in found})


def plot(runs, out, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        fail("matplotlib is missing: install Debian's python3-matplotlib (tools/setup.sh does) "
             "and run this script with /usr/bin/python3")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lr_axes = [ax.twinx() for ax in axes]
    lr_axes[0].sharey(lr_axes[1])
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        steps = sorted(run.train)
        bits = [run.train[s][0] for s in steps]
        lrs = [run.train[s][1] for s in steps]
        vsteps = sorted(run.val)
        vbits = [run.val[s] for s in vsteps]
        label = run.name if len(runs) > 1 else "training"
        for ax, lax, scale in ((axes[0], lr_axes[0], lambda s: s), (axes[1], lr_axes[1], run.tokens)):
            x = [scale(s) for s in steps]
            ax.plot(x, bits, color=color, lw=1.6, label=f"{label}" + (" (training)" if len(runs) > 1 else ""))
            if vsteps:
                ax.plot([scale(s) for s in vsteps], vbits, "o", color=color, ms=6, mec="black",
                        mew=0.6, label=f"{run.name} (validation)" if len(runs) > 1 else "validation")
            lax.plot(x, lrs, "--", color=color, lw=1, alpha=0.55)
            for r in run.resumes:
                ax.axvline(scale(r), color=color, ls=":", lw=1.2, alpha=0.8)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training tokens (steps × batch × context, per part of the run)")
    axes[1].xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    axes[0].set_ylabel("loss (bits/token)")
    lr_axes[1].set_ylabel("learning rate (dashed)")
    lr_axes[0].tick_params(right=False, labelright=False)
    top = max(max(b for b, _ in run.train.values()) for run in runs)
    top = max([top] + [max(run.val.values()) for run in runs if run.val])
    for ax in axes:
        ax.set_ylim(0, top * 1.08)
        ax.grid(alpha=0.3)
    lr_axes[1].set_ylim(0, max(lr for run in runs for _, lr in run.train.values()) * 1.08)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(run.resumes for run in runs):
        handles.append(plt.Line2D([], [], color="gray", ls=":", lw=1.2))
        labels.append("resumed from a checkpoint")
    handles.append(plt.Line2D([], [], color="gray", ls="--", lw=1))
    labels.append("learning rate (right axis)")
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9,
               frameon=False)
    fig.suptitle(title or ", ".join(run.name for run in runs))
    fig.tight_layout(rect=(0, 0.07 + 0.045 * ((len(labels) - 1) // 4), 1, 1))
    fig.savefig(out, dpi=80)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="run directory of par train (or its metrics.jsonl)")
    parser.add_argument("--out", required=True,
                        help="the image to write; its extension chooses the format (.png, .svg, "
                             ".pdf; none: PNG)")
    parser.add_argument("--title", help="title above the plots (default: the run names)")
    args = parser.parse_args()
    try:
        runs = [Run(path) for path in args.runs]
    except InputError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot read {e.filename}: {e.strerror}")
    # The temporary file keeps the extension that chooses the image format (png, svg, pdf).
    root, ext = os.path.splitext(args.out)
    tmp = root + ".tmp" + (ext or ".png")
    try:
        plot(runs, tmp, args.title)
        os.replace(tmp, args.out)
    except ValueError as e:  # matplotlib: a format it does not know
        if os.path.exists(tmp):
            os.remove(tmp)
        fail(f"cannot write {args.out}: {e}")
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        fail(f"cannot write {args.out}: {e.strerror}")
    for run in runs:
        steps = sorted(run.train)
        print(f"{run.name}: {len(steps)} training points (steps {steps[0]}-{steps[-1]}), "
              f"{len(run.val)} validation points, {len(run.resumes)} resume(s)")
    print(f"plot_runs.py: wrote {args.out}")


if __name__ == "__main__":
    main()
