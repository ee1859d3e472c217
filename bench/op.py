"""Speed of the op on one GPU, side by side: lasp_fx, fla chunk_simple_gla, LASP lightning_attn, SDPA flash.

Run on one GPU from the repository root (fla-core and lasp installed, e.g. from .whl/):
    PYTHONPATH=. python bench/op.py [--ts 8192,32768,131072] [--big 524288] [--json out.json]
    PYTHONPATH=. python bench/op.py --first-call      # compile + autotune cost of a first call
    PYTHONPATH=. python bench/op.py --impls lasp_fx --profile 32768   # + per-kernel times

Shape as in DESIGN.md section 5: B=1, H=16, D=E=128, bf16, decay none / const (per head, a
fixed buffer: fla's g_gamma, whose gradient fla never computes) / const_learn (per head,
learnable: lasp_fx alone, the only one with that gradient; "x fla" against fla's const) / gate
(per token, learnable). Times are medians of triton.testing.do_bench (L2 flushed between runs,
grads reset). Floors: bytes = read q, k, v, do (+ gate) and write o, dq, dk, dv once (fwd: q, k, v, o);
FLOPs of the chunked algorithm (C = 64) = T H (2C(D + E) + 4DE) forward, three times that for
fwd+bwd; against the copy bandwidth and bf16 matmul rate measured at the start of the run.
lasp_fx at the smallest T is also checked against float64 (the autotuned configs, not only the first).
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

import lasp_fx
from lasp_fx.cli.timing import card, ceilings, flushed_ms, floors, inputs, peak_mib, slopes, step
from lasp_fx.numerics import rel_rms

B, H, D = 1, 16, 128


def _inputs(T, decay, seed=0):
    return inputs(T, H, D, "const" if decay == "const_learn" else decay, torch.bfloat16, "cuda", batch=B, seed=seed)


def _ours(x):
    return lambda: lasp_fx.linear_attention(x["q"], x["k"], x["v"], x["g"])


def _fla(x, decay):
    from fla.ops.simple_gla import chunk_simple_gla

    kw = {"g_gamma": x["g"]} if decay.startswith("const") else {"g": x["g"]} if decay == "gate" else {}
    return lambda: chunk_simple_gla(x["q"], x["k"], x["v"], scale=D**-0.5, **kw)[0]


def _lightning(x, decay):
    if decay == "gate":
        raise NotImplementedError("lightning_attn has no per-token gate")
    from lasp import lightning_attn

    q, k, v, do = _heads_first(x)
    rates = (slopes(H) if decay.startswith("const") else torch.zeros(H)).cuda().reshape(H, 1, 1)
    return lambda: lightning_attn(q, k, v, rates), [q, k, v], do


def _sdpa(x):
    q, k, v, do = _heads_first(x)
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), [q, k, v], do


def _heads_first(x):
    """Their own layout [B, H, T, D], made once outside the timed region."""
    q, k, v, do = (x[n].detach().transpose(1, 2).contiguous() for n in ("q", "k", "v", "do"))
    return q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do


def _make(name, x, decay):
    """(forward callable, the leaves whose grads the backward fills, the output gradient)."""
    leaves = [x["q"], x["k"], x["v"]] + ([x["g"]] if x["g"] is not None and x["g"].requires_grad else [])
    if name == "lasp_fx":
        return _ours(x), leaves, x["do"]
    if name == "fla":
        return _fla(x, decay), leaves, x["do"]
    if name == "lightning":
        return _lightning(x, decay)
    return _sdpa(x)


def _check_ours(x, decay):
    """Relative RMS error of lasp_fx (autotuned configs) against the op in float64 on this GPU."""
    errs = {}
    outs = []
    for dt in (torch.bfloat16, torch.float64):
        leaves = [x[n].detach().to(dt).requires_grad_() for n in ("q", "k", "v")]
        g = None if x["g"] is None else x["g"].detach().to(torch.float32 if dt != torch.float64 else dt)
        g = g.requires_grad_() if g is not None and x["g"].requires_grad else g
        o = lasp_fx.linear_attention(*leaves, g)
        o.backward(x["do"].to(dt))
        outs.append([o] + [t.grad for t in leaves] + ([g.grad] if g is not None and g.requires_grad else []))
    for name, a, b in zip(["o", "dq", "dk", "dv", "dg"], *outs):
        errs[name] = rel_rms(a, b)
    return max(errs.values())


def bench(Ts, big, path, impls, decays=("none", "const", "const_learn", "gate")):
    bw, peak = ceilings()
    gpu = card("cuda")
    print(f"card: {gpu}  copy {bw / 1e12:.2f} TB/s  bf16 matmul {peak / 1e12:.0f} TFLOP/s  torch {torch.__version__}")
    rows, fla_const = [], {}  # fla const fwd+bwd ms per T: the ratio of const_learn
    hdr = f"{'T':>7} {'decay':11} {'impl':9} {'fwd ms':>8} {'fwd+bwd':>8} {'x fla':>6} {'TB/s':>5} {'TFLOP/s':>7} {'floor':>6} {'peak MB':>8} note"
    print(hdr, flush=True)
    for T in Ts + big:
        for decay in decays:
            bounds = floors(B, T, H, D, decay == "gate")
            # fla first: every other row is printed with its ratio to fla's time
            names = ["lasp_fx"] if T in big else ["fla", "lasp_fx", "lightning"] + (["sdpa"] if decay == "none" else [])
            if decay == "const_learn":  # the others have no gradient for a per-head decay: compare with fla's const
                names = ["lasp_fx"]
            names = [n for n in names if n in impls]
            fla_ms = fla_const.get(T) if decay == "const_learn" else None
            for name in names:
                row = {"T": T, "decay": decay, "impl": name, "card": gpu}
                try:
                    x = _inputs(T, decay)
                    for n in ("q", "k", "v"):
                        x[n].requires_grad_()
                    if decay in ("gate", "const_learn"):  # a learnable decay
                        x["g"].requires_grad_()
                    f, leaves, do = _make(name, x, decay)
                    row["fwd_ms"] = flushed_ms(f)
                    fwd_bwd = step(f, leaves, do)
                    row["fwdbwd_ms"] = flushed_ms(fwd_bwd, grads=leaves)
                    row["peak_mb"] = peak_mib(fwd_bwd)
                    if name == "lasp_fx" and T == Ts[0]:
                        row["max_rel_err_vs_f64"] = _check_ours(x, decay)
                except Exception as ex:  # an anchor that fails here is reported, not fatal
                    row["error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
                if name == "fla":
                    fla_ms = row.get("fwdbwd_ms")
                    if decay == "const":
                        fla_const[T] = fla_ms
                nbytes, flops = bounds["fwdbwd"]
                if "fwdbwd_ms" in row:
                    s = row["fwdbwd_ms"] * 1e-3
                    row.update(tbps=nbytes / s / 1e12, tflops=flops / s / 1e12, floor_ms=max(nbytes / bw, flops / peak) * 1e3)
                    row["fwd_floor_ms"] = max(bounds["fwd"][0] / bw, bounds["fwd"][1] / peak) * 1e3
                rows.append(row)
                _print(row, fla_ms)
                with open(path, "w") as fh:
                    json.dump({"card": gpu, "copy_TBps": bw / 1e12, "matmul_TFLOPs": peak / 1e12, "rows": rows}, fh, indent=1)
                del x
                torch.cuda.empty_cache()


def _print(r, fla_ms):
    if "error" in r:
        fwd = f"{r['fwd_ms']:8.3f}" if "fwd_ms" in r else ""
        print(f"{r['T']:>7} {r['decay']:11} {r['impl']:9} {fwd} error: {r['error']}", flush=True)
        return
    ratio = r["fwdbwd_ms"] / fla_ms if fla_ms and r["impl"] != "fla" else (1.0 if r["impl"] == "fla" else math.nan)
    note = f"err {r['max_rel_err_vs_f64']:.1e}" if "max_rel_err_vs_f64" in r else ""
    print(
        f"{r['T']:>7} {r['decay']:11} {r['impl']:9} {r['fwd_ms']:8.3f} {r['fwdbwd_ms']:8.3f} {ratio:6.2f} "
        f"{r['tbps']:5.2f} {r['tflops']:7.1f} {r['floor_ms']:6.2f} {r['peak_mb']:8.0f} {note}",
        flush=True,
    )


def profile(Ts):
    """Per-kernel device time of one lasp_fx fwd+bwd (median of 3 profiled steps, after warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for T in Ts:
        for decay in ("none", "const", "gate"):
            x = _inputs(T, decay)
            for n in ("q", "k", "v"):
                x[n].requires_grad_()
            if decay == "gate":  # learnable, as timed: its gradient too
                x["g"].requires_grad_()

            grads = [x[n] for n in ("q", "k", "v", "g") if x[n] is not None and x[n].requires_grad]
            fwd_bwd = step(_ours(x), grads, x["do"])  # grads cleared, as do_bench's grad_to_none
            fwd_bwd()
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    fwd_bwd()
                torch.cuda.synchronize()
            print(f"--- profile T={T} decay={decay}: per-kernel device time over 3 fwd+bwd steps")
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14), flush=True)
            del x


def first_call(T):
    """Seconds of the first fwd and bwd per decay form: Triton compile + autotune (or their disk caches)."""
    for decay in ("none", "const", "gate"):
        x = _inputs(T, decay)
        for n in ("q", "k", "v"):
            x[n].requires_grad_()
        t0 = time.perf_counter()
        o = _ours(x)()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        o.backward(x["do"])
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"first call T={T} decay={decay}: fwd {t1 - t0:.1f} s, bwd {t2 - t1:.1f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ts", default="8192,32768,131072")
    p.add_argument("--big", default="524288", help="lasp_fx alone at these T ('' for none)")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "bench_op.json"))
    p.add_argument("--impls", default="lasp_fx,fla,lightning,sdpa", help="comma-separated subset")
    p.add_argument("--first-call", action="store_true")
    p.add_argument("--profile", default="", help="also profile lasp_fx kernels at these T")
    p.add_argument("--decays", default="none,const,const_learn,gate", help="comma-separated subset")
    a = p.parse_args()
    Ts = [int(t) for t in a.ts.split(",")]
    if a.first_call:
        return first_call(Ts[0])
    bench(Ts, [int(t) for t in a.big.split(",") if t], a.json, a.impls.split(","), a.decays.split(","))
    if a.profile:
        profile([int(t) for t in a.profile.split(",")])


if __name__ == "__main__":
    main()
