"""GPU check of packed documents: the Triton kernels with cu_seqlens against each document run alone in float64.

Run on a GPU machine from the repository root:
    PYTHONPATH=. python bench/check_packed_gpu.py [--json out.json] [--quick]

For each shape x layout x decay form x dtype: output, final state and every gradient (q, k, v,
decay, initial state) of the packed op against the float64 op run on each document alone (the
PyTorch path on the same GPU) and concatenated. Layouts put starts mid-chunk, at chunk (64) and
segment (2048) edges, and make 1-token documents. Then a rank's slice with the state from the
rank before and the final state's gradient arriving late (LASP's hooks), against the float64
PyTorch path with the same runs, and every autotune config of the kernels on one case. Prints
a table; exits 1 on any failure. Autotuning is off (LASP_FX_AUTOTUNE=0) to keep compiles bounded.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("LASP_FX_AUTOTUNE", "0")

import torch  # noqa: E402

import lasp_fx  # noqa: E402
from lasp_fx.cli import timing  # noqa: E402
from lasp_fx.ops import chunked, documents  # noqa: E402
from lasp_fx.ops import triton as tk  # noqa: E402
from lasp_fx.ops.triton import backward, forward, launch, states  # noqa: E402
from lasp_fx.numerics import random_inputs, rel_rms  # noqa: E402

TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}  # fp16: for a CPU smoke test (the interpreter has no bf16)
SHAPES = {  # (T, H, H_kv, D, E)
    "T20011_H16_Hk4_D128": (20011, 16, 4, 128, 128),  # segments of 32 chunks: the backward reuses saved states
    "T4133_H4_D64_E256": (4133, 4, 4, 64, 256),
}
KERNELS = [states._local_kernel, forward._out_kernel, backward._dq_kernel, backward._dk_kernel, backward._dv_kernel]
ROWS = []
DEVICE = "cuda"  # a CPU smoke test of this script may set "cpu" (and tiny SHAPES)


def layout(name, T, seed=0):
    """cu_seqlens (a list) of a packed row of T tokens."""
    if name == "one_doc":
        cuts = []
    elif name == "edges":  # chunk edges, segment edges, and mid-chunk next to them
        cuts = [64, 128, 2048, 2049, 4096, 4095 + 64, 8192] + list(range(10000, T, 3000))
    elif name == "ones":  # 1-token documents at the start, the end and on edges
        cuts = [1, 2, 63, 64, 65, 2047, 2048, T - 1]
    elif name == "random":
        gen = torch.Generator().manual_seed(seed)
        cuts = torch.randint(1, T, (max(4, T // 800),), generator=gen).tolist()
    else:
        raise ValueError(name)
    return [0] + sorted({c for c in cuts if 0 < c < T}) + [T]


def _leaves(a, dtype):
    out = {}
    for n, x in a.items():
        x = x.to(dtype if n in ("q", "k", "v") else (torch.float64 if dtype == torch.float64 else torch.float32))
        out[n] = x.detach().requires_grad_()
    return out


def _alone(a, cu, do, ds):
    """float64: each document through the op alone (the initial state into the first), outputs and gradients."""
    x = _leaves(a, torch.float64)
    outs, s = [], None
    for i, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
        g = x.get("log_decay")
        g = None if g is None else (g if g.dim() == 1 else g[:, lo:hi])
        o, s = lasp_fx.linear_attention(x["q"][:, lo:hi], x["k"][:, lo:hi], x["v"][:, lo:hi], g,
                                        initial_state=x.get("initial_state") if i == 0 else None,
                                        output_final_state=True)
        outs.append(o)
    o = torch.cat(outs, dim=1)
    torch.autograd.backward([o, s], [do, ds])
    return {"o": o, "state": s, **{"d" + n: t.grad for n, t in x.items()}}


def _record(label, errs, tol):
    ok = all(e <= tol for e in errs.values())
    ROWS.append({"case": label, "ok": ok, "tol": tol, **errs})
    cells = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
    print(f"{'ok  ' if ok else 'FAIL'} {label:52s} {cells}", flush=True)
    return ok


def check_packed(shape, name, decay, dname, seed):
    T, H, Hk, D, E = SHAPES[shape]
    dtype = DTYPES[dname]
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(1, T, H, D, E, kv_heads=Hk, decay=decay, initial_state=True, generator=gen)
    a = {n: x.to(dtype if n in ("q", "k", "v") else torch.float32).double().to(DEVICE) for n, x in a.items()}
    do = torch.randn(1, T, H, E, generator=gen).to(dtype).double().to(DEVICE)
    ds = torch.randn(1, H, D, E, generator=gen, dtype=torch.float64).to(DEVICE)
    cu = layout(name, T, seed)
    x = _leaves(a, dtype)
    o, s = lasp_fx.linear_attention(x["q"], x["k"], x["v"], x.get("log_decay"), initial_state=x["initial_state"],
                                    output_final_state=True, cu_seqlens=torch.tensor(cu, device=DEVICE))
    torch.autograd.backward([o, s], [do.to(o.dtype), ds.float()])
    got = {"o": o, "state": s, **{"d" + n: t.grad for n, t in x.items()}}
    ref = _alone(a, cu, do, ds)
    errs = {n: rel_rms(got[n], ref[n]) for n in ref}
    return _record(f"{shape} {name:7s} {decay:5s} {dname} ({len(cu) - 1} docs)", errs, TOL[dtype])


def check_slice(decay, continues, seed, dtype=torch.bfloat16):
    """Rank 1 of 2: the state from rank 0 and the final state's gradient arrive late, runs of the rank's slice."""
    T, H, Hk, D, E = SHAPES["T20011_H16_Hk4_D128"]
    L = T // 2
    cu = [0, L // 3, L - 5 if continues else L, L + 64, L + L // 2 + 1, 2 * L]  # local chunk edge 64, mid-chunk
    runs = documents.slice_runs(torch.tensor(cu), None, 1, L, rank=1, world=2, device=DEVICE)
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(1, L, H, D, E, kv_heads=Hk, decay=decay, initial_state=True, generator=gen)
    q, k, v = (a[n].to(dtype).to(DEVICE) for n in ("q", "k", "v"))
    g = a.get("log_decay")
    g = None if g is None else g.float().to(DEVICE)
    s_in = a["initial_state"].float().to(DEVICE)
    do = torch.randn(1, L, H, E, generator=gen).to(dtype).to(DEVICE)
    ds = torch.randn(1, H, D, E, generator=gen).to(DEVICE)
    scale = D**-0.5
    o, s_out = tk.fwd(q, k, v, g, scale, None, state_hook=lambda local: lambda: s_in, runs=runs)
    dq, dk, dv, dG, ds_in = tk.bwd(q, k, v, g, scale, do, s_in, None, state_hook=lambda local: lambda: ds, runs=runs)
    q6, k6, v6, g6, do6 = (None if t is None else t.double() for t in (q, k, v, g, do))
    ro, rs = chunked.fwd(q6, k6, v6, g6, scale, s_in.double(), runs=runs)
    rq, rk, rv, rG, rds = chunked.bwd(q6, k6, v6, g6, scale, do6, s_in.double(), ds.double(), runs=runs)
    errs = {"o": rel_rms(o, ro), "s_out": rel_rms(s_out, rs), "dq": rel_rms(dq, rq), "dk": rel_rms(dk, rk),
            "dv": rel_rms(dv, rv), "ds_in": rel_rms(ds_in, rds)}
    if g is not None:
        errs["dlog_decay"] = rel_rms(tk.log_decay_grad(dG, g), chunked.log_decay_grad(rG, g6))
    label = "continues" if continues else "starts at edge"
    return _record(f"rank slice, late states, {label:14s} {decay:5s} {str(dtype)[6:]}", errs, TOL[dtype])


def check_every_config(decay, seed):
    ok = True
    originals = [kern.configs for kern in KERNELS]
    try:
        for i in range(max(len(c) for c in originals)):
            for kern, configs in zip(KERNELS, originals):
                kern.configs = [configs[i % len(configs)]]
                kern.cache.clear()
                launch.forget(kern)
            ok &= check_packed("T4133_H4_D64_E256", "random", decay, "bf16", seed + i)
            ROWS[-1]["case"] += f" config#{i}"
    finally:
        for kern, configs in zip(KERNELS, originals):
            kern.configs = configs
            kern.cache.clear()
            launch.forget(kern)
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "check_packed_gpu.json"))
    parser.add_argument("--quick", action="store_true", help="bf16 only, two layouts, no per-config pass")
    args = parser.parse_args()
    env = timing.environment(DEVICE)
    print(f"card: {env['card']}  torch {env['torch']}", flush=True)
    t0, ok, seed = time.time(), True, 0
    for shape in SHAPES:
        for name in ("edges", "ones") if args.quick else ("one_doc", "edges", "ones", "random"):
            for decay in ("none", "const", "gate"):
                for dname in ("bf16",) if args.quick or not shape.startswith("T20011") else DTYPES:
                    seed += 1
                    ok &= check_packed(shape, name, decay, dname, seed)
    for decay in ("none", "const", "gate"):
        for continues in (True, False):
            ok &= check_slice(decay, continues, seed=100)
    for decay in () if args.quick else ("none", "gate"):
        ok &= check_every_config(decay, seed=200)
    print(f"{'ALL OK' if ok else 'FAILURES'}: {sum(r['ok'] for r in ROWS)}/{len(ROWS)} in {time.time() - t0:.0f} s")
    with open(args.json, "w") as f:
        json.dump({"environment": env, "rows": ROWS}, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
