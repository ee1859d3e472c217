"""GPU check: lasp_fx.linear_attention on CUDA (the Triton kernels) against float64 on the same GPU.

Run on a GPU machine from the repository root:
    PYTHONPATH=. python bench/check_op_gpu.py [--json out.json]

For each shape x decay form x dtype: outputs, final state and every gradient (q, k, v, decay,
initial state) against the op in float64 (which runs the chunked PyTorch path). Then the LASP
split identities of the primitives, and every autotune config of every kernel on one shape
(so a config the tuner may pick elsewhere is checked too). Prints a table; exits 1 on any
failure. Autotuning is off here (LASP_FX_AUTOTUNE=0) to keep compiles bounded.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("LASP_FX_AUTOTUNE", "0")

import torch  # noqa: E402

import lasp_fx  # noqa: E402
from lasp_fx.cli.timing import card  # noqa: E402
from lasp_fx.ops import chunked  # noqa: E402
from lasp_fx.ops import triton as tk  # noqa: E402
from lasp_fx.ops.op import kernels_for  # noqa: E402
from lasp_fx.ops.triton import backward, forward, launch, states  # noqa: E402
from lasp_fx.numerics import random_inputs, rel_rms  # noqa: E402

TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# name: (B, T, H, H_kv, D, E); T = 4096 + an odd tail, GQA 4:1 on the main shape.
SHAPES = {
    "B2_T4133_H16_Hk4_D128_E128": (2, 4133, 16, 4, 128, 128),
    "B1_T4133_H8_D64_E256": (1, 4133, 8, 8, 64, 256),
    "B1_T3001_H6_Hk2_D96_E80": (1, 3001, 6, 2, 96, 80),
}
# Long enough for segments of SAVED_CHUNKS on a 132-SM GPU: the backward reuses the forward's states.
LONG = "B1_T20011_H16_Hk4_D128_E128"
LONG_SHAPE = (1, 20011, 16, 4, 128, 128)
KERNELS = [states._local_kernel, forward._out_kernel, backward._dq_kernel, backward._dk_kernel, backward._dv_kernel]
ROWS = []


def _poison():
    """Fill freed allocator blocks with NaN so an output element nobody writes cannot pass."""
    x = torch.empty(2**28, device="cuda")
    x.fill_(float("nan"))
    del x


def _run(a, do, ds, dtype, fixed_decay=False):
    """o, final state and the gradients of every input, through the public op (a fixed decay gets none)."""
    leaves = {}
    for name, x in a.items():
        x = x.to(dtype) if name in ("q", "k", "v") else x.to(torch.float64 if dtype == torch.float64 else torch.float32)
        leaves[name] = x.detach().requires_grad_(not (fixed_decay and name == "log_decay"))
    o, s = lasp_fx.linear_attention(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("log_decay"),
        initial_state=leaves.get("initial_state"), output_final_state=True,
    )  # fmt: skip
    torch.autograd.backward([o, s], [do.to(o.dtype), ds.to(s.dtype)])
    return {"o": o, "state": s, **{"d" + n: x.grad for n, x in leaves.items()}}


def _record(label, errs, dtype):
    tol = TOL[dtype]
    ok = all(e <= tol for e in errs.values())
    ROWS.append({"case": label, "ok": ok, "tol": tol, **errs})
    cells = " ".join(f"{k}={v:.1e}" for k, v in errs.items())
    print(f"{'ok  ' if ok else 'FAIL'} {label:58s} {cells}", flush=True)
    return ok


def check_op(shape, decay, dname, initial_state, seed, fixed_decay=False):
    B, T, H, Hk, D, E = SHAPES.get(shape, LONG_SHAPE)
    dtype = DTYPES[dname]
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(B, T, H, D, E, kv_heads=Hk, decay=decay, initial_state=initial_state, generator=gen)
    a = {n: x.to(dtype if n in ("q", "k", "v") else torch.float32).double().cuda() for n, x in a.items()}
    do = torch.randn(B, T, H, E, generator=gen).to(dtype).double().cuda()
    ds = torch.randn(B, H, D, E, generator=gen, dtype=torch.float64).cuda()
    assert kernels_for(a["q"].to(dtype)) is tk, "CUDA tensors must route to the Triton kernels"
    _poison()
    out = _run(a, do, ds, dtype, fixed_decay)
    ref = _run(a, do, ds, torch.float64)
    errs = {n: rel_rms(out[n], ref[n]) for n in out if out[n] is not None}
    fixed = " fixed" if fixed_decay else ""
    return _record(f"{shape} {decay:5s}{fixed} {dname} init={int(initial_state)}", errs, dtype)


def check_saved_states(decay, fixed_decay, seed):
    """The op at a length whose backward reuses the forward's states: it must run one state pass, not two."""
    passes, real = [], backward.segment_states

    def spy(*args, **kw):
        passes.append(kw.get("reverse", False))
        return real(*args, **kw)

    backward.segment_states = spy
    try:
        ok = check_op(LONG, decay, "bf16", True, seed, fixed_decay)
    finally:
        backward.segment_states = real
    if passes != [True]:  # (the float64 reference runs the PyTorch path: no passes of these kernels)
        print(f"FAIL {LONG} {decay}: the backward ran state passes {passes}, expected only the reverse one")
        ROWS.append({"case": f"{LONG} {decay} saved states reused", "ok": False})
        return False
    return ok


def check_split(decay, dname, seed):
    """fwd(None) and bwd(ds_out=None) with the state / gradient handed back late by the hook, against float64."""
    B, T, H, Hk, D, E = SHAPES["B2_T4133_H16_Hk4_D128_E128"]
    dtype = DTYPES[dname]
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(B, T, H, D, E, kv_heads=Hk, decay=decay, initial_state=True, generator=gen)
    q, k, v = (a[n].to(dtype).cuda() for n in ("q", "k", "v"))
    g = a.get("log_decay")
    g = None if g is None else g.float().cuda()
    s_in = a["initial_state"].float().cuda()
    do = torch.randn(B, T, H, E, generator=gen).to(dtype).cuda()
    ds = torch.randn(B, H, D, E, generator=gen).cuda()
    scale = D**-0.5
    _poison()
    o, s_out = tk.fwd(q, k, v, g, scale, None, state_hook=lambda local: lambda: s_in)
    dq, dk, dv, dG, ds_in = tk.bwd(q, k, v, g, scale, do, s_in, None, state_hook=lambda local: lambda: ds)
    f64 = [None if x is None else x.double() for x in (q, k, v, g, do, s_in, ds)]
    q6, k6, v6, g6, do6, s6, ds6 = f64
    ro, rs = chunked.fwd(q6, k6, v6, g6, scale, s6)
    rq, rk, rv, rG, rds = chunked.bwd(q6, k6, v6, g6, scale, do6, s6, ds6)
    errs = {"o": rel_rms(o, ro), "s_out": rel_rms(s_out, rs), "dq": rel_rms(dq, rq), "dk": rel_rms(dk, rk),
            "dv": rel_rms(dv, rv), "ds_in": rel_rms(ds_in, rds)}
    if g is not None:
        errs["dlog_decay"] = rel_rms(tk.log_decay_grad(dG, g), chunked.log_decay_grad(rG, g6))
    return _record(f"late states {decay:5s} {dname}", errs, dtype)


def check_every_config(decay, seed):
    """Each autotune config of each kernel (the i-th of all at once), bf16, main shape."""
    ok = True
    originals = [kern.configs for kern in KERNELS]
    try:
        for i in range(max(len(c) for c in originals)):
            for kern, configs in zip(KERNELS, originals):
                kern.configs = [configs[i % len(configs)]]
                kern.cache.clear()
                launch.forget(kern)  # else the direct path keeps launching the config compiled first
            ok &= check_op("B2_T4133_H16_Hk4_D128_E128", decay, "bf16", True, seed + i)
            ROWS[-1]["case"] += f" config#{i}"
    finally:
        for kern, configs in zip(KERNELS, originals):
            kern.configs = configs
            kern.cache.clear()
            launch.forget(kern)
    return ok


def check_fast_launch(decay, seed):
    """launch.launch's direct path (calls after the first) gives bit for bit what Triton's own path gives."""
    B, T, H, Hk, D, E = SHAPES["B2_T4133_H16_Hk4_D128_E128"]
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(B, T, H, D, E, kv_heads=Hk, decay=decay, initial_state=True, generator=gen)
    a = {n: x.double().cuda() for n, x in a.items()}
    do = torch.randn(B, T, H, E, generator=gen).double().cuda()
    ds = torch.randn(B, H, D, E, generator=gen, dtype=torch.float64).cuda()
    enabled, runs = launch.ENABLED, []
    try:
        for fast in (False, True, True):  # Triton's path, then the first and the second call through launch
            launch.ENABLED = fast
            _poison()
            runs.append(_run(a, do, ds, torch.bfloat16))
    finally:
        launch.ENABLED = enabled
    hits = sum(1 for key in launch._cache if key[0] in KERNELS)
    same = {n: float(all(torch.equal(r[n], runs[0][n]) for r in runs[1:])) for n in runs[0] if runs[0][n] is not None}
    ok = all(same.values()) and hits > 0
    ROWS.append({"case": f"fast launch {decay}", "ok": ok, "identical": same, "cached signatures": hits})
    print(f"{'ok  ' if ok else 'FAIL'} {'fast launch ' + decay + ' bf16 (bitwise vs Triton path)':58s} "
          f"identical={sorted(n for n, v in same.items() if v)} cached={hits}", flush=True)
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "check_op_gpu.json"))
    parser.add_argument("--quick", action="store_true", help="bf16, decay forms on the main shape only, no per-config pass")
    args = parser.parse_args()
    print(f"card: {card('cuda')}  torch {torch.__version__}", flush=True)
    t0, ok, seed = time.time(), True, 0
    for shape in SHAPES:
        main = shape.startswith("B2")
        for dname in DTYPES if main and not args.quick else ["bf16"]:
            for decay in ("none", "const", "gate") if main or not args.quick else ("const",):
                seed += 1
                ok &= check_op(shape, decay, dname, initial_state=seed % 2 == 0, seed=seed)
    for decay in ("const", "gate"):  # a decay buffer: the backward without dG and what only it needs
        ok &= check_op("B2_T4133_H16_Hk4_D128_E128", decay, "bf16", True, seed=50, fixed_decay=True)
    for decay, fixed in (("none", False), ("const", True), ("const", False), ("gate", False), ("gate", True)):
        ok &= check_saved_states(decay, fixed, seed=80)
    for decay in ("none", "const", "gate") if args.quick else ("none", "const", "gate"):
        ok &= check_split(decay, "bf16", seed=100)
    for decay in ("none", "gate"):
        ok &= check_fast_launch(decay, seed=150)
    for decay in () if args.quick else ("none", "const", "gate"):
        ok &= check_every_config(decay, seed=200)
    print(f"{'ALL OK' if ok else 'FAILURES'}: {sum(r['ok'] for r in ROWS)}/{len(ROWS)} in {time.time() - t0:.0f} s")
    with open(args.json, "w") as f:
        json.dump({"card": card("cuda"), "rows": ROWS}, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
