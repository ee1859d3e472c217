"""Numeric proof that a candidate region computes the op's function (STACK.md section 2.4).

The region (every node between q, k, v, the decay source and the output) is re-run in float64
on random inputs and compared with the replacement that the rewrite would insert. The scale
(and for normalised forms the factor and epsilon) is fitted first, then checked on fresh inputs.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.fx import Node

from lasp_fx.passes import emit
from lasp_fx.passes.graph import ancestors, region_between, shape, topo_order
from lasp_fx.passes.match import Candidate
from lasp_fx.passes.values import Values
from lasp_fx.testing.numerics import rel_rms

TOL = 1e-6  # a different function is off by O(1); float64 rounding is ~1e-14, buffers computed in float32 ~1e-7


class ProbeFailed(Exception):
    """The candidate is not (provably) the op's function; the message says why."""


def region(cand: Candidate) -> list[Node]:
    starts = _starts(cand)
    nodes = region_between(starts, cand.out)
    order = topo_order(cand.out.graph)
    return sorted(nodes, key=order.__getitem__)


def _starts(cand: Candidate) -> set[Node]:
    s = {cand.q, cand.k, cand.v}
    if cand.decay.node is not None:
        s.add(cand.decay.node)
    return s


def check_sides(cand: Candidate, nodes: list[Node], dynamic_sources: set[Node]) -> None:
    """Raise when the region reads a parameter or an input other than through q, k, v and the
    decay: the replacement would silently drop that dependency."""
    starts, inside = _starts(cand), set(nodes)
    for n in nodes:
        t = n.target
        if n.op != "call_function" or (isinstance(t, torch._ops.OpOverload) and t._schema.is_mutable):
            raise ProbeFailed(f"the region contains {n.op} {t} (line of {n.name}), which the probe cannot replay")
    sides = {a for n in nodes for a in n.all_input_nodes if a not in inside and a not in starts}
    bad = sorted((s.name for s in ancestors(sides, stop=starts) if s in dynamic_sources))
    if bad:
        raise ProbeFailed(f"the attention also depends on {', '.join(bad)} (not a decay the op can take)")


def _random_inputs(cand: Candidate, values: Values, gen: torch.Generator, positive: bool) -> dict:
    def rnd(node):
        shp = shape(node)
        if positive:
            return torch.rand(shp, generator=gen, dtype=torch.float64) + 0.5
        return torch.randn(shp, generator=gen, dtype=torch.float64)

    env = {cand.q: rnd(cand.q), cand.k: rnd(cand.k), cand.v: rnd(cand.v)}
    d = cand.decay
    if d.node is not None:
        real = values[d.node]
        if d.kind == "gate":
            u = torch.rand(real.shape, generator=gen, dtype=torch.float64)
            env[d.node] = 0.4 + 0.59 * u if d.psi == "log" else -0.02 - 0.8 * u
        else:  # perturb the real per-head values a little: both sides must follow
            env[d.node] = real * (1 + 0.1 * (torch.rand(real.shape, generator=gen, dtype=torch.float64) - 0.5))
    return env


def _run(cand: Candidate, values: Values, nodes: list[Node], env: dict):
    F = values.evaluate(nodes, env)[cand.out]
    R = emit.build(cand, emit.Eager(), env)
    return F, R


def fit_and_verify(cand: Candidate, values: Values, nodes: list[Node], seed: int = 0) -> tuple[Candidate, float]:
    """Fit scale (or normalisation) on one random draw, verify on two more; return the fitted
    candidate and the worst relative error, or raise ProbeFailed."""
    gen = torch.Generator().manual_seed(seed)
    try:
        cand = _fit(cand, values, nodes, gen)
        err = 0.0
        for _ in range(2):
            env = _random_inputs(cand, values, gen, cand.normalised)
            F, R = _run(cand, values, nodes, env)
            if not torch.isfinite(F).all():
                raise ProbeFailed("the region gives non-finite values on random inputs")
            err = max(err, rel_rms(R, F))
    except emit.NotRepresentable as e:
        raise ProbeFailed(f"layout not representable: {e}") from None
    except (RuntimeError, IndexError, TypeError) as e:
        raise ProbeFailed(f"the probe could not run the region: {str(e).splitlines()[0]}") from None
    if err > TOL:
        raise ProbeFailed(f"not the same function: relative error {err:.2e} on random inputs")
    return cand, err


def _fit(cand: Candidate, values: Values, nodes: list[Node], gen) -> Candidate:
    if not cand.normalised:
        c1 = replace(cand, scale=1.0)
        F, R = _run(c1, values, nodes, _random_inputs(c1, values, gen, False))
        den = float((R * R).sum())
        if den == 0.0:
            raise ProbeFailed("the replacement is zero on random inputs")
        return replace(cand, scale=_snap(float((F * R).sum()) / den))
    # F = a * N / (D + b) with N, D the op's numerator and denominator at scale 1; with v = 1,
    # 1 / F = 1 / a + (b / a) / D is linear in 1 / D.
    c1 = replace(cand, scale=1.0, norm_a=1.0, norm_b=0.0)
    env = _random_inputs(c1, values, gen, True)
    env[cand.v] = torch.ones_like(env[cand.v])
    F, _ = _run(c1, values, nodes, env)
    D = _denominator(c1, env)
    x, y = (1.0 / D).flatten(), (1.0 / F).flatten()
    A = torch.stack([torch.ones_like(x), x], dim=1)
    sol = torch.linalg.lstsq(A, y[:, None]).solution[:, 0]
    inv_a, b_over_a = float(sol[0]), float(sol[1])
    if inv_a == 0.0:
        raise ProbeFailed("normalised form: could not fit the factor")
    return replace(cand, scale=1.0, norm_a=_snap(1.0 / inv_a), norm_b=_snap(b_over_a / inv_a))


def _snap(x: float) -> float:
    """A fitted constant to 13 significant digits: the fit's last bits depend on the BLAS and
    its threads (0.49999999999999994 for 0.5), the verification that follows does not need them,
    and the report and the emitted graph should read the same on every machine."""
    return float(f"{x:.13g}")


def _denominator(cand: Candidate, env: dict) -> torch.Tensor:
    """The op's normaliser q . sum(k) (with decay) at scale 1, in the layout of the output."""
    c = replace(cand, normalised=False)
    env = dict(env)
    env[cand.v] = torch.ones_like(env[cand.v])
    return emit.build(c, emit.Eager(), env)
