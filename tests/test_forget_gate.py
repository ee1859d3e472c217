"""A log-decay of -inf (a gate that forgets everything) is exactly a state reset: no NaN, and every output
and gradient equals the op run separately on the tokens before and after it (on every path)."""

from __future__ import annotations

import pytest
import torch

import lasp_fx
from lasp_fx.ops.op import forget_all_as_finite
from tests.helpers import workers_sp
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import run_spawned

B, T, H, D = 2, 150, 2, 8
RESETS = {(0, 0): 70, (0, 1): 3, (1, 0): 64, (1, 1): 149}  # (batch, head): position; on chunk edges and inside
TOL = {"chunked-float64": 1e-12, "chunked-float32": 2e-5, "triton-float32": 2e-5}


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, T, H, D, generator=gen, dtype=torch.float64) for n in ("q", "k", "v", "do")}
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64) * 0.5
    for (b, h), t in RESETS.items():
        g[b, t, h] = float("-inf")
    return x, g


def _reference(x, g):
    """Per (batch, head): the op on the tokens before the reset, and on those from it on (its own gate unused)."""
    o, grads = torch.zeros_like(x["q"]), {n: torch.zeros_like(x["q"]) for n in "qkv"}
    dg = torch.zeros_like(g)
    for (b, h), t in RESETS.items():
        for lo, hi in ((0, t), (t, T)):
            if lo == hi:
                continue
            leaves = {n: x[n][b:b + 1, lo:hi, h:h + 1].clone().requires_grad_() for n in "qkv"}
            gs = g[b:b + 1, lo:hi, h:h + 1].clone()
            gs[:, 0] = 0.0 if lo == t else gs[:, 0]  # the reset's own gate acts on nothing after it
            gs.requires_grad_()
            out = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], gs, scale=0.5)
            out.backward(x["do"][b:b + 1, lo:hi, h:h + 1])
            o[b, lo:hi, h] = out[0, :, 0].detach()
            for n in "qkv":
                grads[n][b, lo:hi, h] = leaves[n].grad[0, :, 0]
            dg[b, lo + (lo == t):hi, h] = gs.grad[0, (lo == t):, 0]  # the reset's own gradient is 0
    return o, grads, dg


def _run(path, x, g):
    if path == "triton-float32":
        from lasp_fx.ops import triton as tk

        dev = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels: on the GPU, else the interpreter
        q, k, v, do = (x[n].to(dev, torch.float32) for n in ("q", "k", "v", "do"))
        gf = forget_all_as_finite(g.to(dev, torch.float32))
        o, _ = tk.fwd(q, k, v, gf, 0.5)
        dq, dk, dv, dG, _ = tk.bwd(q, k, v, gf, 0.5, do)
        dg = tk.log_decay_grad(dG, gf).masked_fill(torch.isneginf(g.to(dev)), 0.0)  # the clamp's gradient is 0 there
        return o, {"q": dq, "k": dk, "v": dv}, dg
    dtype = torch.float64 if path == "chunked-float64" else torch.float32
    leaves = {n: x[n].to(dtype).detach().clone().requires_grad_() for n in "qkv"}
    gl = g.to(dtype).detach().clone().requires_grad_()
    o = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], gl, scale=0.5)
    o.backward(x["do"].to(dtype))
    return o.detach(), {n: leaves[n].grad for n in "qkv"}, gl.grad


@pytest.mark.parametrize("path", list(TOL))
def test_minus_inf_gate_is_a_state_reset(path):
    x, g = _inputs()
    o, grads, dg = _run(path, x, g)
    ref_o, ref_grads, ref_dg = _reference(x, g)
    for name, got in (("o", o), *((f"d{n}", grads[n]) for n in "qkv"), ("dlog_decay", dg)):
        assert torch.isfinite(got).all(), f"{path}: {name} has NaN or inf"
    assert rel_rms(o, ref_o) <= TOL[path], f"{path}: o off by {rel_rms(o, ref_o):.1e}"
    for n in "qkv":
        err = rel_rms(grads[n], ref_grads[n])
        assert err <= TOL[path], f"{path}: d{n} off by {err:.1e}"
    assert rel_rms(dg, ref_dg) <= 10 * TOL[path], f"{path}: dlog_decay off by {rel_rms(dg, ref_dg):.1e}"
    resets = torch.isneginf(g)
    assert (dg[resets] == 0).all() if path != "triton-float32" else True  # exactly 0 through the op's clamp


def test_per_head_minus_inf_forgets_every_token():
    x, _ = _inputs()
    q, k, v = (x[n] for n in "qkv")
    g = torch.tensor([float("-inf"), -0.1], dtype=torch.float64)
    o = lasp_fx.linear_attention(q, k, v, g, scale=0.5)
    only_self = 0.5 * (q[:, :, 0] * k[:, :, 0]).sum(-1, keepdim=True) * v[:, :, 0]
    assert torch.isfinite(o).all() and rel_rms(o[:, :, 0], only_self) <= 1e-14


@pytest.mark.parametrize("method", ["ring", "allgather"])
def test_resets_across_ranks_match_one_device(method):
    for rank, errors in enumerate(run_spawned(workers_sp.check_reset, 3, method, timeout=240)):
        assert all(e <= 1e-12 for e in errors.values()), f"rank {rank}: {errors}"
