#!/usr/bin/env python3
"""The tables of tools/gpu_check.sh's summary, from the files its runs wrote.

  gpu_summary.py bench TSV                      par bench's table (bench.tsv: config, label,
                                                then JSON and its line, or why there is none)
  gpu_summary.py targets TARGETS TORCH NOTE     the issues' targets (targets.txt: label, then
                                                JSON or why not), and the PyTorch yardstick
                                                (torch.jsonl; NOTE: why it stopped, if it did)
"""
import json
import os
import sys


def bench_table(tsv):
    # The share of the card's dense peak comes from par bench (launch/gpu_peaks.cpp).
    print("bench:  %-28s %-12s %10s %12s %9s %7s %10s %9s" % ("config", "prec/attn", "ms/step",
          "tokens/s", "TFLOP/s", "% peak", "peak mem", "attn ms"))
    for line in open(tsv):
        parts = line.rstrip("\n").split("\t")
        config, prec = os.path.basename(parts[0]), parts[1]
        if parts[2] != "JSON":
            print("        %-28s %-12s %s" % (config, prec, parts[2]))
            continue
        j = json.loads(parts[3])
        tflops = j.get("gflops", 0) / 1e3
        share = j.get("peak_share", 0)
        mem = None
        for key, scale in (("peak_device_mib", 1), ("peak_device_bytes", 1 / 2**20),
                           ("peak_rss_mib", 1)):
            if key in j:
                mem = "%.0f MiB%s" % (j[key] * scale, "" if "device" in key else " host")
                break
        attn = j.get("attention_ms", 0)
        print("        %-28s %-12s %10.1f %12.0f %9.1f %7s %10s %9s" % (
            config, prec, j.get("ms_per_step", 0), j.get("input_tokens_per_s", 0), tflops,
            "%.1f" % (100 * share) if share else "n/a", mem or "n/a",
            "%.2f" % attn if attn else "-"))


def targets_table(targets_txt, torch_jsonl, torch_note):
    rows = {}
    for line in open(targets_txt):
        parts = line.rstrip("\n").split("\t")
        rows[parts[0]] = parts[1:]
    def js(label):
        r = rows.get(label)
        if not r or not r[0].startswith("{"):
            return None, (r[0] if r else "not run")
        return json.loads(r[0]), (r[1] if len(r) > 1 else "")
    print("targets (configs/gpu-100m-131k.ini, bf16, --cross-attend-dropout 0, batch 1):")
    def line(what, value, unit, target, ok):
        print("  %-36s %10.2f %-4s target %-10s %s" % (what, value, unit, target, "met" if ok else "MISSED"))
    j, why = js("n131k")
    if j:
        ms = j["ms_per_step"]
        line("N=131072 step", ms, "ms", "<= 12 ms", ms <= 12)
        mem = j.get("peak_device_mib", 0) / 1024
        line("N=131072 peak device memory", mem, "GiB", "<= 4 GiB", mem <= 4)
        tf = j["gflops"] / 1e3
        share = j.get("peak_share", 0)
        print("  %-36s %10.1f TFLOP/s, %s of the card's dense bf16 peak" % (
            "N=131072 model rate", tf, "%.1f%%" % (100 * share) if share else "an unknown share"))
    else:
        print("  N=131072: " + why)
    j, why = js("n131k-kvfp32")
    if j:
        print("  %-36s %10.2f ms, %.2f GiB peak (--kv-storage fp32)" % (
            "N=131072, keys and values in fp32", j["ms_per_step"], j.get("peak_device_mib", 0) / 1024))
    else:
        print("  N=131072, keys and values in fp32: " + why)
    j, attn = js("n131k-profile")
    if j and attn:
        line("cross-attention forward + backward", float(attn), "ms", "<= 8 ms", float(attn) <= 8)
        print("  %-36s %10.2f ms (with --profile, which synchronizes after each op)" % (
            "all attention (cross and latent)", j.get("attention_ms", 0)))
    j, why = js("n1m")
    if j:
        line("N=1048576 step", j["ms_per_step"], "ms", "<= 100 ms", j["ms_per_step"] <= 100)
    else:
        print("  N=1048576: " + why)
    j, why = js("decode1")
    if j:
        rate = j["cached_tokens_per_s"]
        line("decode, 1 sample, tokens/s", rate, "", ">= 2000", rate >= 2000)
        line("decode, cached / uncached", j["speedup"], "x", ">= 50x", j["speedup"] >= 50)
        print("  %-36s %10d replayed, %d recorded (CUDA graphs)" % (
            "decode, 1 sample, steps", j.get("steps_replayed", -1), j.get("steps_captured", -1)))
    else:
        print("  decode, 1 sample: " + why)
    j, why = js("decode1-nographs")
    if j:
        print("  %-36s %10.1f tokens/s (--cuda-graphs off)" % ("decode, 1 sample, no graphs", j["cached_tokens_per_s"]))
    else:
        print("  decode, 1 sample, no graphs: " + why)
    j, why = js("decode1-abs")
    k, why_fp32 = js("decode1-abs-kvfp32")
    if j and k:
        print("  %-36s %10.1f tokens/s (absolute positions; fp32 caches: %.1f, %.2fx)" % (
            "decode without tables, bf16 caches", j["cached_tokens_per_s"], k["cached_tokens_per_s"],
            j["cached_tokens_per_s"] / k["cached_tokens_per_s"]))
    elif j:
        print("  %-36s %10.1f tokens/s (absolute positions; fp32 caches: %s)" % (
            "decode without tables, bf16 caches", j["cached_tokens_per_s"], why_fp32))
    else:
        print("  decode without tables: " + why)
    j, why = js("decode16")
    if j:
        total = j["cached_tokens_per_s"]
        line("decode, 16 samples, tokens/s in all", total, "", ">= 10000", total >= 10000)
        print("  %-36s %10.2f tokens/s per sample, %d refills" % (
            "", j["cached_tokens_per_s_per_sample"], j["refills"]))
    else:
        print("  decode, 16 samples: " + why)
    j, why = js("decode16-long")
    if j:
        print("  %-36s %10.1f tokens/s in all (4,000 tokens each: own keys as rows)" % (
            "decode, 16 samples, long", j["cached_tokens_per_s"]))
    else:
        print("  decode, 16 samples, long: " + why)
    # The decoder's memory plan (what par sample and bench --decode check before decoding)
    # against the peak it measured: a peak above the plan is a bug in the plan.
    for label, what in (("decode1", "1 sample"), ("decode16", "16 samples"),
                        ("decode16-long", "16 samples, long")):
        j, why = js(label)
        if j and j.get("planned_device_mib", 0) > 0:
            peak, plan = j["peak_device_mib"] / 1024, j["planned_device_mib"] / 1024
            print("  %-36s %10.2f GiB peak, %.2f GiB planned: %s" % (
                "decode memory, " + what, peak, plan, "within the plan" if peak <= plan else "PLAN TOO LOW"))
    # The yardstick: the same model in PyTorch on this GPU (bench/torch_reference.py).
    torch = {}
    for text in open(torch_jsonl):
        r = json.loads(text)
        torch[r.pop("what")] = r
    env = torch.get("environment")
    # A part missing from a run stopped at its limit (torch.compile, say) says so.
    cut = torch_note if torch_note.startswith(("cut", "timed out")) else ""
    missing = {"error": "not run" + (" (%s)" % cut if cut else "")}
    if not env:
        print("yardstick: PyTorch not measured (%s)" % torch_note)
    else:
        print("yardstick: PyTorch %s, the same model on this GPU with every key visible "
              "(bench/torch_reference.py):" % env.get("torch", "?"))
        par, _ = js("n131k")
        eager = torch.get("train_eager", {})
        if par and "parameters" in eager:
            same = eager["parameters"] == par.get("parameters")
            print("  %-36s PyTorch %d, par %s%s" % ("parameters", eager["parameters"], par.get("parameters"),
                  "" if same else ": NOT the same model, no comparison"))
            if not same:
                par = None
        for what, name in (("train_eager", "PyTorch step, eager"), ("train_compiled", "PyTorch step, torch.compile")):
            r = torch.get(what, missing)
            if "error" in r:
                print("  %-36s %s" % (name, r["error"]))
                continue
            print("  %-36s %10.2f ms, peak %.2f GiB" % (name, r["ms_per_step"], r["peak_device_mib"] / 1024))
            if par:
                print("  %-36s %10.2f x (par %.2f ms)" % ("  par's step time / this", par["ms_per_step"] / r["ms_per_step"],
                                                       par["ms_per_step"]))
        for what, name in (("attention_flash_attention", "attention alone, FlashAttention-2"),
                           ("attention_cudnn_attention", "attention alone, cuDNN, a bool mask")):
            r = torch.get(what, missing)
            if "error" in r:
                print("  %-36s %s" % (name, r["error"]))
            else:
                print("  %-36s %10.2f ms forward, %.2f ms forward + backward" % (
                    name, r["forward_ms"], r["forward_backward_ms"]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "bench":
        bench_table(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "targets":
        targets_table(*sys.argv[2:])
    else:
        sys.exit(__doc__)
