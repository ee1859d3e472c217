"""Packed documents on one GPU: the op with cu_seqlens against the same tokens unpacked, fwd and fwd+bwd.

Run on one GPU from the repository root:
    PYTHONPATH=. python bench/packed.py [--t 131072] [--doc 4096] [--json out.json]

Shape as bench/op.py: B = 1, H = 16, D = E = 128, bf16; decay none / const (per head, a fixed
buffer) / gate (per token, learnable). Rows per decay form, medians of triton.testing.do_bench
(warm runs, L2 flushed, grads reset):
    unpacked      the T tokens as one sequence (the target: issue 21 asks packed within 5% of it)
    packed        cu_seqlens (int32, on the GPU) of documents of --doc tokens: the kernels' masks
                  plus the per-call runs index (ops/documents.py)
    packed_runs   the same with the runs index built once outside the timed call (the kernels alone)
    batched       the documents as a batch [T / doc, doc]: what packing equal lengths amounts to
    mixed         cu_seqlens of random lengths 1..2 doc (same T)
    fla_varlen    with --fla: fla's chunk_simple_gla with the same cu_seqlens (a reference point; fla's
                  first call at 128K autotunes for minutes)
Also the packed output against the batched one (each document alone, same kernels): max rel. RMS.
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import lasp_fx
from lasp_fx.ops import documents
from lasp_fx.ops.op import single_device
from lasp_fx.numerics import rel_rms

H, D = 16, 128
DEVICE = "cuda"  # a CPU smoke test of the helpers may set "cpu"
SLOPES = torch.tensor([2 ** (-8 * (i + 1) / H) for i in range(H)])


def _inputs(T, decay, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(1, T, H, D, generator=gen).to(DEVICE, torch.bfloat16) for n in ("q", "k", "v", "do")}
    x["k"] /= D**0.5
    x["g"] = None
    if decay == "const":
        x["g"] = -SLOPES.to(DEVICE)
    elif decay == "gate":
        x["g"] = F.logsigmoid(torch.randn(1, T, H, generator=gen) + 2.0).to(DEVICE).requires_grad_()
    for n in ("q", "k", "v"):
        x[n].requires_grad_()
    return x


def _mixed_cu(T, doc, seed=1):
    gen = torch.Generator().manual_seed(seed)
    cuts, at = [0], 0
    while at < T:
        at = min(T, at + int(torch.randint(1, 2 * doc + 1, (1,), generator=gen)))
        cuts.append(at)
    return torch.tensor(cuts, dtype=torch.int32, device=DEVICE)


def _callables(x, T, doc, decay, mixed, fla):
    """name -> (forward callable giving o, output gradient); `mixed`: the random layout's cu_seqlens."""
    q, k, v, g, do = x["q"], x["k"], x["v"], x["g"], x["do"]
    cu = torch.arange(0, T + 1, doc, dtype=torch.int32, device=DEVICE)
    runs = documents.slice_runs(cu, None, 1, T, device=q.device)
    scale = D**-0.5
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


def bench(T, doc, decays, path, fla=False):
    card = torch.cuda.get_device_name()
    print(f"card: {card}  torch {torch.__version__}  T={T}  documents of {doc}", flush=True)
    mixed = _mixed_cu(T, doc)
    rows = []
    print(f"{'decay':6} {'impl':12} {'fwd ms':>8} {'fwd+bwd':>8} {'x unpacked':>10}", flush=True)
    for decay in decays:
        x = _inputs(T, decay)
        leaves = [x["q"], x["k"], x["v"]] + ([x["g"]] if x["g"] is not None and x["g"].requires_grad else [])
        base = None
        for name, (f, do) in _callables(x, T, doc, decay, mixed, fla).items():
            row = {"T": T, "doc": doc, "decay": decay, "impl": name, "card": card}
            try:
                row["fwd_ms"] = do_bench(f, return_mode="median")
                row["fwdbwd_ms"] = do_bench(lambda: f().backward(do), grad_to_none=leaves, return_mode="median")
            except Exception as ex:  # fla's varlen path, say: reported, not fatal
                row["error"] = f"{type(ex).__name__}: {str(ex)[:200]}"
            for t in leaves:
                t.grad = None
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
        rows.append({"decay": decay, "check": "packed vs batched (each document alone)", **_agreement(x, T, doc)})
        print(f"{decay:6} packed vs batched: {rows[-1]}", flush=True)
        _write(path, card, rows)
        del x
        torch.cuda.empty_cache()
    within = [r["x_unpacked"] <= 1.05 for r in rows if r.get("impl") == "packed" and "x_unpacked" in r]
    print(f"packed within 5% of unpacked fwd+bwd: {sum(within)}/{len(within)} decay forms", flush=True)
    _write(path, card, rows)


def _agreement(x, T, doc):
    """Relative RMS of the packed output and gradients against the batched (each document alone) run."""
    outs = []
    for packed in (True, False):
        leaves = {n: x[n].detach().clone().requires_grad_() for n in ("q", "k", "v")}
        g = x["g"]
        g = None if g is None else g.detach().clone().requires_grad_(g.requires_grad)
        n = T // doc
        if packed:
            cu = torch.arange(0, T + 1, doc, dtype=torch.int32, device=DEVICE)
            o = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], g, cu_seqlens=cu)
        else:
            b = lambda t: t.view(n, doc, *t.shape[2:])  # noqa: E731
            o = lasp_fx.linear_attention(b(leaves["q"]), b(leaves["k"]), b(leaves["v"]),
                                         None if g is None else (g if g.dim() == 1 else b(g))).view(1, T, H, D)
        o.backward(x["do"])
        outs.append([o] + [leaves[m].grad for m in ("q", "k", "v")] + ([g.grad] if g is not None and g.requires_grad
                                                                        else []))
    return {name: rel_rms(a, b) for name, a, b in zip(("o", "dq", "dk", "dv", "dg"), *outs)}


def _write(path, card, rows):
    with open(path, "w") as fh:
        json.dump({"card": card, "rows": rows}, fh, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", type=int, default=131072)
    parser.add_argument("--doc", type=int, default=4096)
    parser.add_argument("--decays", default="none,const,gate")
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "packed.json"))
    parser.add_argument("--fla", action="store_true", help="also fla's chunk_simple_gla with cu_seqlens")
    args = parser.parse_args()
    if args.t % args.doc:
        raise SystemExit(f"--t ({args.t}) must be a multiple of --doc ({args.doc})")
    bench(args.t, args.doc, args.decays.split(","), args.json, args.fla)


if __name__ == "__main__":
    main()
