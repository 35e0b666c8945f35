#!/usr/bin/env python3
"""The yardstick of par's GPU speed: the same Perceiver AR in PyTorch, on the same card.

What a user would run instead of par: the model of spec/MODEL.md written the usual way
(bf16 autocast, scaled_dot_product_attention with a lower-right causal mask, which runs
FlashAttention-2; fused AdamW, gradient clipping), trained on random tokens with every key
visible (par's `--cross-attend-dropout 0`), eager and under torch.compile; and the
cross-attention alone (M queries over N keys), forward and forward + backward, through
FlashAttention-2 and cuDNN where PyTorch offers them. tools/gpu_check.sh runs it after par's
own measurements, so both come from one run on one GPU (docs/gpu.md).

Usage: bench/torch_reference.py [--config configs/gpu-100m-131k.ini] [--steps 5]
                                [--warmup 2] [--budget SECONDS] [--no-compile]
Prints one JSON line per measurement ({"what": ...}); the first is the environment.
Exit status 3 when PyTorch or a GPU is missing (nothing measured), 0 otherwise; a part that
fails (say torch.compile) prints {"what": ..., "error": ...} and the rest still runs.
"""
import argparse
import json
import math
import sys
import time


def read_config(path):
    """par's INI format: `key = value` lines, # comments."""
    config = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                key, value = (part.strip() for part in line.split("=", 1))
                config[key] = value
    return config


def emit(**fields):
    print(json.dumps(fields), flush=True)


def build(torch, c):
    """The model of spec/MODEL.md (rotary positions, no absolute encodings)."""
    nn, F = torch.nn, torch.nn.functional
    from torch.nn.attention.bias import causal_lower_right

    V, d, N, M = c["vocab"], c["d"], c["N"], c["M"]
    Hc, H, L, mult, p = c["Hc"], c["H"], c["L"], c["F"], c["dropout"]

    def rotary_tables(first, count, head_dim):
        # Section 3: the first R dims of a head rotate in B bands, wavelengths 1 .. W.
        R = 2 * int(head_dim * c["rotary_fraction"] / 2)
        B = R // 2
        if B == 0:
            return None
        k = torch.arange(B, dtype=torch.float64)
        e = k * B / (B - 1) * (2.0 / R) if B > 1 else torch.zeros(1, dtype=torch.float64)
        theta = c["wavelength"] ** (-e)
        a = torch.arange(first, first + count, dtype=torch.float64)[:, None] * theta[None, :]
        return torch.cos(a).float().cuda(), torch.sin(a).float().cuda(), R

    def rotate(x, table):  # x: [batch, tokens, heads, head_dim]; pairs are adjacent dims
        if table is None:
            return x
        cos, sin, R = table
        cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
        x1, x2 = x[..., 0:R:2], x[..., 1:R:2]
        turned = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((turned, x[..., R:]), dim=-1)

    def mlp(fc1, fc2, x):
        return fc2(F.relu(fc1(x)).square())

    class LatentLayer(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_attn, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, mult * d), nn.Linear(mult * d, d)

        def forward(self, x, table):
            b = x.shape[0]
            q, k, v = self.qkv(self.ln_attn(x)).view(b, M, 3, H, d // H).unbind(2)
            q, k = rotate(q, table), rotate(k, table)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + F.dropout(self.o(a.transpose(1, 2).reshape(b, M, d)), p)
            return x + F.dropout(mlp(self.fc1, self.fc2, self.ln_mlp(x)), p)

    class PerceiverAR(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(V, d)
            self.z_linear = nn.Linear(d, d)
            self.ln_q, self.ln_kv, self.ln_mlp = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.fc1, self.fc2 = nn.Linear(d, mult * d), nn.Linear(mult * d, d)
            self.layers = nn.ModuleList(LatentLayer() for _ in range(L))
            self.final_ln, self.head = nn.LayerNorm(d), nn.Linear(d, V)
            self.key_rot = rotary_tables(0, N, d // Hc)
            self.query_rot = rotary_tables(N - M, M, d // Hc)
            self.self_rot = rotary_tables(N - M, M, d // H)
            self.mask = causal_lower_right(M, N)  # latent i sees keys j <= N - M + i

        def forward(self, tokens, targets):
            b, D = tokens.shape[0], d // Hc
            h = self.embed(tokens)
            z0 = self.z_linear(h[:, N - M:])
            kvn = self.ln_kv(h)
            q = rotate(self.q(self.ln_q(z0)).view(b, M, Hc, D), self.query_rot)
            k = rotate(self.k(kvn).view(b, N, Hc, D), self.key_rot)
            v = self.v(kvn).view(b, N, Hc, D)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), attn_mask=self.mask)
            x = z0 + F.dropout(self.o(a.transpose(1, 2).reshape(b, M, d)), p)
            x = x + F.dropout(mlp(self.fc1, self.fc2, self.ln_mlp(x)), p)
            for layer in self.layers:
                x = layer(x, self.self_rot)
            logits = self.head(self.final_ln(x)).float()
            lse = torch.logsumexp(logits, dim=-1)
            ce = lse - logits.gather(-1, targets[..., None]).squeeze(-1)
            return (ce + 1e-4 * lse.square()).mean()  # section 6, with the z-loss

    return PerceiverAR().cuda()


def time_steps(torch, step, steps, warmup):
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), sum(times) / len(times), torch.cuda.max_memory_allocated() / 2**20


def train(torch, c, compiled, steps, warmup):
    torch.manual_seed(0)
    model = build(torch, c)
    forward = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0, fused=True)
    tokens = torch.randint(3, c["vocab"], (c["batch"], c["N"]), device="cuda")
    targets = torch.randint(3, c["vocab"], (c["batch"], c["M"]), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = forward(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    best, mean, peak = time_steps(torch, step, steps, warmup)
    return dict(ms_per_step=round(best, 3), ms_per_step_mean=round(mean, 3),
                peak_device_mib=round(peak, 1),
                parameters=sum(t.numel() for t in model.parameters()))


def attention_alone(torch, c, backend_name, reps=10):
    """M queries over N keys, Hc heads, bf16, lower-right causal: forward, forward + backward.

    Under CUDNN_ATTENTION PyTorch (2.11) does not hand the lower-right causal bias to cuDNN
    as such: with the flash backend switched off, the bias is materialized as a boolean
    [M, N] mask, so that row times cuDNN with an arbitrary mask (or says no kernel takes
    it), not cuDNN's causal kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right
    F = torch.nn.functional
    M, N, Hc, D = c["M"], c["N"], c["Hc"], c["d"] // c["Hc"]
    q = torch.randn(1, Hc, M, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, Hc, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, Hc, N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    do = torch.randn(1, Hc, M, D, device="cuda", dtype=torch.bfloat16)
    mask = causal_lower_right(M, N)
    out = {}
    with sdpa_kernel(getattr(SDPBackend, backend_name)):
        for name, backward in (("forward_ms", False), ("forward_backward_ms", True)):
            def once():
                # Fresh gradients each time: accumulating into the last ones would add a
                # read and a write of k.grad and v.grad (256 MiB each) to every backward.
                q.grad = k.grad = v.grad = None
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                if backward:
                    o.backward(do)
            once()  # the first call picks and loads the kernels
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            best = math.inf
            for _ in range(reps):
                start.record()
                once()
                end.record()
                end.synchronize()
                best = min(best, start.elapsed_time(end))
            out[name] = round(best, 3)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/gpu-100m-131k.ini")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget", type=float, default=300,
                        help="seconds: torch.compile is skipped when less than half is left")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    t0 = time.time()
    raw = read_config(args.config)
    N = int(raw["context-length"])
    c = dict(vocab=int(raw["vocab-size"]), d=int(raw["d-model"]), N=N,
             M=int(raw["num-latents"]), L=int(raw["num-layers"]), Hc=int(raw["cross-heads"]),
             H=int(raw["self-heads"]), F=int(raw.get("mlp-factor", 4)),
             dropout=float(raw.get("dropout", 0.1)), batch=int(raw.get("batch-size", 1)),
             rotary_fraction=float(raw.get("rotary-fraction", 0.5)),
             wavelength=float(raw.get("max-wavelength", 0)) or N)  # 0 or unset: N, as par reads it
    if raw.get("position-encoding", "rotary") != "rotary":
        sys.exit("torch_reference: only rotary positions are modelled (position-encoding = "
                 + raw["position-encoding"] + ")")
    try:
        import torch
    except ImportError:
        print("torch_reference: PyTorch is not installed here: nothing to compare with",
              file=sys.stderr)
        sys.exit(3)
    if not torch.cuda.is_available():
        print("torch_reference: PyTorch sees no GPU here", file=sys.stderr)
        sys.exit(3)
    emit(what="environment", torch=torch.__version__, gpu=torch.cuda.get_device_name(0),
         cudnn=torch.backends.cudnn.version(), config=args.config, **c)

    parts = [("train_eager", lambda: train(torch, c, False, args.steps, args.warmup))]
    parts += [("attention_" + b.lower(), lambda b=b: attention_alone(torch, c, b))
              for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION")]
    if not args.no_compile:
        parts.append(("train_compiled", lambda: train(torch, c, True, args.steps, args.warmup)))
    for what, run in parts:
        if what == "train_compiled" and time.time() - t0 > args.budget / 2:
            emit(what=what, error="skipped: less than half of --budget left for compiling")
            continue
        try:
            emit(what=what, **run())
        except Exception as e:  # one part's failure (an unsupported kernel) leaves the rest
            emit(what=what, error=(type(e).__name__ + ": " + str(e))[:300])
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
