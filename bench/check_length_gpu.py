"""bf16 outputs and gradients against float64 as T grows to 1M tokens, per decay form; and >2^31 elements.

    PYTHONPATH=. python bench/check_length_gpu.py --json $OUT/check_length.json   # ~3-4 min on an H100

Sweep: T in --ts (default 4K .. 1M), B = 1, H = --heads, D = E = --dim; decays: none; constant
per head at log-decay -1e-3, -0.1, -1 and -20 (every head the same: the strongest forgets a
token after one step); per-token gates (log-sigmoid of N(2, 1), and x 10 stronger), and gates
with a -inf (a state reset) every 1000 tokens. Inputs are
drawn in float64, then the op runs in bf16 (Triton kernels; the decay in float32) and in float64
through the chunked PyTorch path on the same GPU (ops/chunked.py: memory linear in T). Reported:
relative RMS error of o, dq, dk, dv and dlog_decay, and whether any output or gradient holds a
NaN or inf. Rows are written to the JSON as they come, so a run cut short keeps what it did.

Large tensors (--large): B = 1, T = 2^21 + 1024, H = 16, D = E = 64: q has 2^31 + 2^20 elements,
so any int32 offset overflows past token 2^21. Constant log-decay -5 per token (a token's weight
falls by e^-5 per step), so each token's output and gradients depend on the last few tokens only:
a float64 reference over a window of tokens (plus 64 tokens of context either side) must match the
large call's values there, at the start, just below and above the 2^31-element boundary, and the end.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import lasp_fx
from lasp_fx.cli.timing import card
from lasp_fx.numerics import rel_rms

DECAYS = [("none", None), ("const", -1e-3), ("const", -0.1), ("const", -1.0), ("const", -20.0),
          ("gate", 1.0), ("gate", 10.0), ("reset", 1.0)]


def _inputs(T, H, D, decay, strength, seed, device):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = {n: torch.randn(1, T, H, D, generator=gen, device=device, dtype=torch.float64) for n in "qkv"}
    x["k"] /= D**0.25
    if decay == "const":
        x["log_decay"] = torch.full((H,), strength, device=device, dtype=torch.float64)
    elif decay in ("gate", "reset"):
        logit = torch.randn(1, T, H, generator=gen, device=device, dtype=torch.float64) + 2.0
        x["log_decay"] = torch.nn.functional.logsigmoid(logit) * strength
        if decay == "reset":  # -inf gates (state resets, as at document boundaries) every ~1000 tokens
            x["log_decay"][:, 997::1000] = float("-inf")
    x["do"] = torch.randn(1, T, H, D, generator=gen, device=device, dtype=torch.float64)
    return x


def _run(x, dtype):
    leaves = {n: (t.to(dtype) if n in "qkv" else t.to(torch.float32 if dtype != torch.float64 else dtype))
              .detach().requires_grad_() for n, t in x.items() if n != "do"}
    o = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], leaves.get("log_decay"))
    o.backward(x["do"].to(o.dtype))
    return o.detach(), {n: t.grad for n, t in leaves.items()}


def _finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def sweep(args, out, save):
    for T in (int(t) for t in args.ts.split(",")):
        for decay, strength in DECAYS:
            start = time.monotonic()
            x = _inputs(T, args.heads, args.dim, decay, strength, seed=T + len(out["rows"]), device=args.device)
            o, g = _run(x, torch.bfloat16)
            o_ref, g_ref = _run(x, torch.float64)
            row = dict(T=T, decay=decay, strength=strength, finite=_finite(o, *g.values()),
                       o=rel_rms(o, o_ref), **{f"d{n}": rel_rms(g[n], g_ref[n]) for n in g},
                       dlog_decay_ref_rms=None if "log_decay" not in g_ref
                       else float(g_ref["log_decay"].pow(2).mean().sqrt()),
                       seconds=round(time.monotonic() - start, 2))
            out["rows"].append(row)
            save()
            print(json.dumps(row), flush=True)
            del x, o, g, o_ref, g_ref
            torch.cuda.empty_cache() if args.device == "cuda" else None


def large(args, out, save):
    H, D, T = 16, 64, 2**21 + 1024
    boundary = 2**31 // (H * D)  # the token whose q elements cross 2^31
    gen = torch.Generator(device=args.device).manual_seed(1)
    x = {n: torch.randn(1, T, H, D, generator=gen, device=args.device, dtype=torch.bfloat16) for n in "qkv"}
    do = torch.randn(1, T, H, D, generator=gen, device=args.device, dtype=torch.bfloat16)
    g = torch.full((H,), -5.0, device=args.device)
    leaves = {n: t.requires_grad_() for n, t in x.items()}
    o = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], g)
    o.backward(do)
    res = dict(T=T, elements=T * H * D, over_2_31=T * H * D > 2**31,
               finite=_finite(o, *(t.grad for t in leaves.values())), windows=[])
    W, ctx = 256, 64
    for s in (0, T // 2, boundary - W // 2, boundary + 8, T - W):
        a, b = max(0, s - ctx), min(T, s + W + ctx)
        win = {n: t.detach()[:, a:b].double().requires_grad_() for n, t in x.items()}
        o_ref = lasp_fx.linear_attention(win["q"], win["k"], win["v"], g.double())
        o_ref.backward(do[:, a:b].double())
        lo, hi = s - a, s - a + W
        # o and dq need the past (context before s); dk, dv the future (context after s + W)
        got = dict(o=rel_rms(o.detach()[:, s:s + W], o_ref.detach()[:, lo:hi]),
                   **{f"d{n}": rel_rms(leaves[n].grad[:, s:s + W], win[n].grad[:, lo:hi]) for n in "qkv"})
        res["windows"].append(dict(start=s, first_element=s * H * D, **got))
    out["large"] = res
    save()
    print(json.dumps(res), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ts", default="4096,65536,262144,1048576")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--large", type=int, default=1, help="1: also the >2^31-element check (GPU, ~40 GB)")
    p.add_argument("--json", default="")
    args = p.parse_args()
    out = {"card": card(args.device), "args": vars(args), "rows": []}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)

    try:
        sweep(args, out, save)
        if args.large:
            large(args, out, save)
    except Exception as e:  # noqa: BLE001 - recorded, so a partial run still reports
        out["error"] = f"{type(e).__name__}: {e}"
        save()
        raise


if __name__ == "__main__":
    main()
