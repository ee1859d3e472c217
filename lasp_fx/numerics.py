"""Relative-RMS comparisons and random linear-attention inputs for tests and GPU checks."""

from __future__ import annotations

import torch
from torch import Tensor


def rel_rms(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are zero; inf on NaN)."""
    out, ref = out.detach().double(), ref.detach().double().to(out.device)
    if out.shape != ref.shape:
        raise AssertionError(f"shape mismatch: {tuple(out.shape)} vs {tuple(ref.shape)}")
    if not torch.isfinite(out).all():
        return float("inf")
    den = ref.norm()
    num = (out - ref).norm()
    if den == 0:
        return float(num)
    return float(num / den)


def assert_close_rms(out: Tensor, ref: Tensor, tol: float, name: str = "tensor") -> None:
    err = rel_rms(out, ref)
    assert err <= tol, f"{name}: relative RMS error {err:.3e} > {tol:.1e}"


def random_inputs(
    B: int,
    T: int,
    H: int,
    D: int,
    E: int,
    *,
    kv_heads: int | None = None,
    decay: str = "none",
    initial_state: bool = False,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
) -> dict:
    """Random q, k, v (and decay / state) as keyword arguments of `linear_attention`.

    decay: "none", "const" (per head, log(gamma) in [-0.3, -0.001]) or "gate" (per token,
    log-sigmoid of a random logit, so values lie in about [-4, -0.02]).
    """
    Hk = H if kv_heads is None else kv_heads
    g = generator

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    args = dict(q=rnd(B, T, H, D), k=rnd(B, T, Hk, D) / D**0.25, v=rnd(B, T, Hk, E))
    if decay == "const":
        lam = -torch.empty(H, dtype=torch.float64).uniform_(0.001, 0.3, generator=g)
        args["log_decay"] = lam.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)
    elif decay == "gate":
        logit = torch.randn(B, T, H, generator=g, dtype=torch.float64) + 2.0
        gate = torch.nn.functional.logsigmoid(logit)
        args["log_decay"] = gate.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype)
    elif decay != "none":
        raise ValueError(f"decay must be 'none', 'const' or 'gate', got {decay!r}")
    if initial_state:
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        args["initial_state"] = rnd(B, H, D, E).to(sdt)
    return args
