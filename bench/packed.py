"""Packed documents on one GPU: the op with cu_seqlens against the same tokens unpacked, fwd and fwd+bwd.

Run on one GPU from the repository root:
    python bench/packed.py [--t 131072] [--doc 4096] [--json out.json] [--fla] [--profile]
    python bench/packed.py --device cpu --t 1024 --doc 256 --heads 2 --dim 16    # a dry run

Shape as bench/op.py: B = 1, H = 16, D = E = 128, bf16; decay none / const (per head, a fixed
buffer) / gate (per token, learnable). Rows per decay form, medians (lasp_fx.cli.timing: do_bench
with L2 flushed and grads reset on a GPU, warm runs on the CPU):
    unpacked      the T tokens as one sequence (the target: issue 21 asks packed within 5% of it)
    packed        cu_seqlens (int32, on the device) of documents of --doc tokens: the kernels'
                  masks plus the per-call runs index (ops/documents.py)
    packed_runs   the same with the runs index built once outside the timed call (the kernels alone)
    batched       the documents as a batch [T / doc, doc]: what packing equal lengths amounts to
    mixed         cu_seqlens of random lengths 1..2 doc (same T)
    fla_varlen    with --fla: fla's chunk_simple_gla with the same cu_seqlens (its first call at
                  128K autotunes for minutes)
Also the packed output and gradients against the batched run (each document alone, the same
kernels): relative RMS. With --profile, each row's fwd+bwd under torch.profiler too: device time
per step of every kernel (µs, and launches per step), printed side by side against `unpacked`
(where packing costs) and stored in the JSON (rows with "profile").
"""

import argparse
import json
import os

import torch

import lasp_fx
from lasp_fx.cli import timing
from lasp_fx.numerics import rel_rms
from lasp_fx.ops import documents
from lasp_fx.ops.op import single_device


def _mixed_cu(T, doc, device, seed=1):
    gen = torch.Generator().manual_seed(seed)
    cuts, at = [0], 0
    while at < T:
        at = min(T, at + int(torch.randint(1, 2 * doc + 1, (1,), generator=gen)))
        cuts.append(at)
    return torch.tensor(cuts, dtype=torch.int32, device=device)


def _callables(x, T, doc, decay, fla):
    """name -> (forward callable giving o, output gradient)."""
    q, k, v, g, do = x["q"], x["k"], x["v"], x["g"], x["do"]
    device = q.device
    cu = torch.arange(0, T + 1, doc, dtype=torch.int32, device=device)
    mixed = _mixed_cu(T, doc, device)
    runs = documents.slice_runs(cu, None, 1, T, device=device)
    scale = q.shape[-1] ** -0.5
    n = T // doc
    batched = lambda t: t.view(n, doc, *t.shape[2:])  # noqa: E731
    g_b = None if g is None else (g if g.dim() == 1 else batched(g))
    calls = {
        "unpacked": (lambda: lasp_fx.linear_attention(q, k, v, g), do),
        "packed": (lambda: lasp_fx.linear_attention(q, k, v, g, cu_seqlens=cu), do),
        "packed_runs": (lambda: single_device(q, k, v, g, None, scale, runs)[0], do),
        "batched": (lambda: lasp_fx.linear_attention(batched(q), batched(k), batched(v), g_b), batched(do)),
        "mixed": (lambda: lasp_fx.linear_attention(q, k, v, g, cu_seqlens=mixed), do),
    }
    if fla:
        from fla.ops.simple_gla import chunk_simple_gla

        kw = {"g_gamma": g} if decay == "const" else {"g": g} if decay == "gate" else {}
        calls["fla_varlen"] = (lambda: chunk_simple_gla(q, k, v, scale=scale, cu_seqlens=cu.long(), **kw)[0], do)
    return calls


def _time(fn, grads, device):
    if timing.is_cuda(device):
        return timing.flushed_ms(fn, grads)
    return timing.median_ms(fn, device, warmup=1, reps=3)


def _profile(fn, device, steps=3):
    """{kernel: {"calls", "us"}} per step of `fn` (one fwd+bwd) after one warm call: device time
    from torch.profiler (CPU op time on the CPU dry run)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = timing.is_cuda(device)
    fn()
    timing.sync(device)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        timing.sync(device)
    kernels = {}
    for e in prof.key_averages():
        names = ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)
        us = next((getattr(e, n) for n in names if hasattr(e, n)), 0.0)
        if us > 0:
            kernels[e.key] = {"calls": e.count / steps, "us": us / steps}
    return dict(sorted(kernels.items(), key=lambda kv: -kv[1]["us"]))


def _print_profiles(decay, profiles):
    """Kernels side by side, µs per fwd+bwd step (launches in brackets), the worst gaps to unpacked first."""
    impls = list(profiles)
    base = profiles.get("unpacked", {})
    names = set().union(*profiles.values())

    def gap(n):
        return max(p.get(n, {}).get("us", 0.0) for p in profiles.values()) - base.get(n, {}).get("us", 0.0)

    print(f"--- {decay}: device µs per fwd+bwd step [launches]", flush=True)
    print(f"{'kernel':44} " + " ".join(f"{i:>16}" for i in impls), flush=True)
    for n in sorted(names, key=lambda n: (-gap(n), n))[:30]:
        cells = []
        for i in impls:
            k = profiles[i].get(n)
            cells.append(f"{k['us']:10.1f} [{k['calls']:3.0f}]" if k else f"{'-':>16}")
        print(f"{n[:44]:44} " + " ".join(cells), flush=True)
    totals = [sum(k["us"] for k in profiles[i].values()) for i in impls]
    print(f"{'total':44} " + " ".join(f"{t:16.1f}" for t in totals), flush=True)


def _agreement(x, T, doc):
    """Relative RMS of the packed output and gradients against the batched (each document alone) run."""
    outs, n = [], T // doc
    for packed in (True, False):
        q, k, v = timing.leaves(x)
        g = x["g"] if x["g"] is None or not x["g"].requires_grad else x["g"].detach().clone().requires_grad_()
        if packed:
            cu = torch.arange(0, T + 1, doc, dtype=torch.int32, device=q.device)
            o = lasp_fx.linear_attention(q, k, v, g, cu_seqlens=cu)
        else:
            b = lambda t: t.view(n, doc, *t.shape[2:])  # noqa: E731
            o = lasp_fx.linear_attention(b(q), b(k), b(v), None if g is None else (g if g.dim() == 1 else b(g)))
            o = o.view(1, T, *o.shape[2:])
        o.backward(x["do"])
        outs.append([o, q.grad, k.grad, v.grad] + ([g.grad] if g is not None and g.requires_grad else []))
    return {name: rel_rms(a, b) for name, a, b in zip(("o", "dq", "dk", "dv", "dg"), *outs)}


def bench(args):
    device = args.device
    env = timing.environment(device)
    print(f"card: {env['card']}  torch {env['torch']}  T={args.t}  documents of {args.doc}", flush=True)
    rows = []
    print(f"{'decay':6} {'impl':12} {'fwd ms':>8} {'fwd+bwd':>8} {'x unpacked':>10}", flush=True)
    for decay in args.decays.split(","):
        x = timing.inputs(args.t, args.heads, args.dim, decay, device=device)
        for n in ("q", "k", "v"):
            x[n].requires_grad_()
        if decay == "gate":  # learnable, as in training
            x["g"].requires_grad_()
        grads = [x["q"], x["k"], x["v"]] + ([x["g"]] if decay == "gate" else [])
        base, profiles = None, {}
        impls = args.impls.split(",")
        for name, (f, do) in _callables(x, args.t, args.doc, decay, args.fla).items():
            if name not in impls and not (name == "fla_varlen" and args.fla):
                continue
            row = {"T": args.t, "doc": args.doc, "decay": decay, "impl": name}
            try:
                row["fwd_ms"] = _time(f, None, device)
                row["fwdbwd_ms"] = _time(timing.step(f, grads, do), grads, device)
                if args.profile:
                    profiles[name] = row["profile"] = _profile(timing.step(f, grads, do), device)
                    row["profile_total_us"] = sum(k["us"] for k in row["profile"].values())
            except Exception as ex:  # fla's varlen path, say: reported, not fatal
                row["error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
            if name == "unpacked":
                base = row.get("fwdbwd_ms")
            if base and "fwdbwd_ms" in row:
                row["x_unpacked"] = row["fwdbwd_ms"] / base
            rows.append(row)
            if "error" in row:
                print(f"{decay:6} {name:12} error: {row['error']}", flush=True)
            else:
                ratio = row.get("x_unpacked", 1.0)
                print(f"{decay:6} {name:12} {row['fwd_ms']:8.3f} {row['fwdbwd_ms']:8.3f} {ratio:10.3f}", flush=True)
        if profiles:
            _print_profiles(decay, profiles)
        rows.append({"decay": decay, "check": "packed vs batched (each document alone)",
                     **_agreement(x, args.t, args.doc)})
        print(f"{decay:6} packed vs batched, rel. RMS: {rows[-1]}", flush=True)
        _write(args.json, env, rows)
        del x
        if timing.is_cuda(device):
            torch.cuda.empty_cache()
    within = [r["x_unpacked"] <= 1.05 for r in rows if r.get("impl") == "packed" and "x_unpacked" in r]
    print(f"packed within 5% of unpacked fwd+bwd: {sum(within)}/{len(within)} decay forms", flush=True)
    _write(args.json, env, rows)


def _write(path, env, rows):
    with open(path, "w") as fh:
        json.dump({"environment": env, "rows": rows}, fh, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, default=131072)
    parser.add_argument("--doc", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--decays", default="none,const,gate")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fla", action="store_true", help="also fla's chunk_simple_gla with cu_seqlens")
    parser.add_argument("--impls", default="unpacked,packed,packed_runs,batched,mixed",
                        help="comma-separated rows to run (unpacked first: the others are compared with it)")
    parser.add_argument("--profile", action="store_true",
                        help="also each row's per-kernel device time per fwd+bwd (torch.profiler), into the JSON")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "packed.json"))
    args = parser.parse_args()
    if args.t % args.doc:
        raise SystemExit(f"--t ({args.t}) must be a multiple of --doc ({args.doc})")
    bench(args)


if __name__ == "__main__":
    main()
