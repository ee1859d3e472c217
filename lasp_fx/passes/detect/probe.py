"""Numeric proof that a candidate region computes the op's function (docs/design.md §6).

The region (every node between q, k, v, the decay source and the output) is re-run in float64
on random inputs and compared with the replacement that the rewrite would insert. The scale
(and for normalised forms the factor and epsilon) is fitted first, then checked on fresh inputs.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.fx import Node

from lasp_fx.passes import emit
from lasp_fx.passes.graph import ancestors, region_between, shape, sizes_as_numbers, source_of, topo_order
from lasp_fx.passes.match import Candidate
from lasp_fx.passes.detect.values import Values
from lasp_fx.numerics import rel_rms

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
    # a size read (export's sym_size of a dynamic input) is the length, as dynamo's SymInt inputs are: not data
    sizes = set(cand.out.graph.find_nodes(op="call_function", target=torch.ops.aten.sym_size.int))
    feeding = ancestors(sides, stop=starts | sizes)
    bad = sorted((s.name for s in feeding if s in dynamic_sources and s not in sizes))
    if bad:
        raise ProbeFailed(f"the attention also depends on {', '.join(bad)} (not a decay the op can take)")
    read = inside | feeding
    as_number = next((n for n in topo_order(cand.out.graph) if n in read and any(map(_varies, sizes_as_numbers(n)))),
                     None)
    if as_number is not None:  # the op would keep the example's value at every length
        where, code = source_of(as_number)
        raise ProbeFailed(f"the attention uses the sequence length as a number ({where}: {code}), which the op "
                          "cannot follow from one length to another")


def _varies(size) -> bool:
    """Whether a symbolic size takes more than one value at the lengths the graph's guards allow: a
    block loop's first block, Min(8, s) with s >= 8, is 8 wherever the graph runs."""
    try:
        bound = size.node.shape_env.bound_sympy(size.node.expr)
    except Exception:  # noqa: BLE001 - no range known: assume it varies
        return True
    return not (bound.is_singleton() if hasattr(bound, "is_singleton") else bound.lower == bound.upper)


# Verification draws of q, k and v: signed, positive, tiny and of widely varying magnitude per
# token, so that an abs, clamp, max, relu or where on a value inside the region is active on some
# draws and inactive on others (a form equal to the op only where such a step does nothing is
# refused rather than rewritten).
DRAWS = ("signed", "positive", "tiny", "wide")


def _draw(shp, gen, kind: str, seq: int | None) -> torch.Tensor:
    if kind == "positive":
        return torch.rand(shp, generator=gen, dtype=torch.float64) + 0.5
    x = torch.randn(shp, generator=gen, dtype=torch.float64)
    if kind == "tiny":
        return x * 1e-3
    if kind == "wide" and seq is not None:  # per-token magnitudes from 1e-3 to 1e2
        sizes = [1] * len(shp)
        sizes[seq] = shp[seq]
        return x * 10.0 ** (5 * torch.rand(sizes, generator=gen, dtype=torch.float64) - 3)
    return x


def _random_inputs(cand: Candidate, values: Values, gen: torch.Generator, kind: str) -> dict:
    env = {n: _draw(shape(n), gen, kind, lay.seq)
           for n, lay in ((cand.q, cand.q_layout), (cand.k, cand.k_layout), (cand.v, cand.v_layout))}
    d = cand.decay
    if d.node is not None:
        real = values[d.node]
        if d.kind == "gate":
            u = torch.rand(real.shape, generator=gen, dtype=torch.float64)
            env[d.node] = 0.4 + 0.59 * u if d.psi == "log" else -0.02 - 0.8 * u
        else:  # perturb the real per-head values a little: both sides must follow
            env[d.node] = real * (1 + 0.1 * (torch.rand(real.shape, generator=gen, dtype=torch.float64) - 0.5))
    return env


def _run(cand: Candidate, values: Values, nodes: list[Node], env: dict, grad: bool = False):
    F = values.evaluate(nodes, env, grad=grad)[cand.out]
    with torch.enable_grad() if grad else torch.no_grad():
        R = emit.build(cand, emit.Eager(), env)
    return F, R


def fit_and_verify(cand: Candidate, values: Values, nodes: list[Node], seed: int = 0) -> tuple[Candidate, float]:
    """Fit scale (or normalisation) on one random draw; check causality, then values and
    vector-Jacobian products against the replacement on every draw of `DRAWS`; return the
    fitted candidate and the worst relative error, or raise ProbeFailed."""
    gen = torch.Generator().manual_seed(seed)
    try:
        cand = _fit(cand, values, nodes, gen)
        _check_causal(cand, values, nodes, gen)
        err = max(_check_draw(cand, values, nodes, gen, kind) for kind in DRAWS)
    except emit.NotRepresentable as e:
        raise ProbeFailed(f"layout not representable: {e}") from None
    except (RuntimeError, IndexError, TypeError, ValueError, KeyError) as e:
        raise ProbeFailed(f"the probe could not run the region: {str(e).splitlines()[0]}") from None
    return cand, err


def _grad_inputs(cand: Candidate, env: dict) -> list[Node]:
    nodes = [cand.q, cand.k, cand.v]
    if cand.decay.node is not None and env[cand.decay.node].is_floating_point():
        nodes.append(cand.decay.node)
    return nodes


def _check_draw(cand: Candidate, values: Values, nodes: list[Node], gen, kind: str) -> float:
    """Values and the VJP of the region against the replacement's on one draw: a dropped detach,
    or a step whose derivative differs from the op's, shows in the gradients only."""
    env = _random_inputs(cand, values, gen, kind)
    wrt = _grad_inputs(cand, env)
    for n in wrt:
        env[n] = env[n].requires_grad_(True)
    F, R = _run(cand, values, nodes, env, grad=True)
    if not torch.isfinite(F).all():
        raise ProbeFailed(f"the region gives non-finite values on {kind} random inputs")
    err = rel_rms(R, F)
    if err > cand.tol:
        raise ProbeFailed(f"not the same function: relative error {err:.2e} on {kind} random inputs")
    cot = torch.randn(F.shape, generator=gen, dtype=torch.float64)
    gF = _vjp(F, [env[n] for n in wrt], cot)
    gR = _vjp(R, [env[n] for n in wrt], cot)
    for n, a, b in zip(wrt, gF, gR):
        e = rel_rms(b, a)
        if e > cand.tol:
            role = {cand.q: "q", cand.k: "k", cand.v: "v"}.get(n, "the decay")
            raise ProbeFailed(f"same values but not the same gradients: the gradient of {role} is off by a relative "
                              f"error of {e:.2e} on {kind} random inputs (a detach, or a step whose derivative "
                              f"differs from the op's)")
        err = max(err, e)
    return err


def _vjp(out: torch.Tensor, inputs: list[torch.Tensor], cot: torch.Tensor) -> list[torch.Tensor]:
    if not out.requires_grad:
        return [torch.zeros_like(x) for x in inputs]
    gs = torch.autograd.grad(out, inputs, cot, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, gs)]


def _check_causal(cand: Candidate, values: Values, nodes: list[Node], gen) -> None:
    """Changing q, k, v (and a gate) after position t must leave the region's outputs up to t
    unchanged: the op is causal, and a step that reads later tokens may be inactive on the
    value draws (a max over the sequence under a clamp, say)."""
    T = cand.seq_len
    if T < 2 or cand.out_layout.seq is None:
        return
    t = (T - 1) // 2
    env = _random_inputs(cand, values, gen, "signed")
    F, _ = _run(cand, values, nodes, env)
    later = dict(env)
    for n, seq in _seq_inputs(cand).items():
        x = env[n].clone()
        tail = x.narrow(seq, t + 1, x.shape[seq] - t - 1)
        tail.copy_(_later_values(tail, gen, gate=(n is cand.decay.node), psi=cand.decay.psi))
        later[n] = x
    F2, _ = _run(cand, values, nodes, later)
    seq = cand.out_layout.seq
    a, b = F.narrow(seq, 0, t + 1), F2.narrow(seq, 0, t + 1)
    if rel_rms(b, a) > cand.tol:
        raise ProbeFailed(f"not causal: outputs at positions <= {t} change when only later tokens change "
                          f"(relative change {rel_rms(b, a):.2e})")


def _seq_inputs(cand: Candidate) -> dict[Node, int]:
    out = {cand.q: cand.q_layout.seq, cand.k: cand.k_layout.seq, cand.v: cand.v_layout.seq}
    d = cand.decay
    if d.node is not None and d.kind == "gate" and d.layout is not None and d.layout.seq is not None:
        out[d.node] = d.layout.seq
    return {n: s for n, s in out.items() if s is not None}


def _later_values(tail: torch.Tensor, gen, gate: bool, psi: str) -> torch.Tensor:
    u = torch.rand(tail.shape, generator=gen, dtype=torch.float64)
    if gate:
        return 0.4 + 0.59 * u if psi == "log" else -0.02 - 0.8 * u
    return 30.0 * (2 * u - 1)


def _fit(cand: Candidate, values: Values, nodes: list[Node], gen) -> Candidate:
    if not cand.normalised:
        c1 = replace(cand, scale=1.0)
        F, R = _run(c1, values, nodes, _random_inputs(c1, values, gen, "signed"))
        den = float((R * R).sum())
        if den == 0.0:
            raise ProbeFailed("the replacement is zero on random inputs")
        return replace(cand, scale=_snap(float((F * R).sum()) / den))
    # F = a * N / (D + b) with N, D the op's numerator and denominator at scale 1; with v = 1,
    # 1 / F = 1 / a + (b / a) / D is linear in 1 / D. A second fit on inputs scaled so that D is
    # about b pins an epsilon down to its own precision (the first sees it only next to D >> b).
    c1 = replace(cand, scale=1.0, norm_a=1.0, norm_b=0.0)
    env = _random_inputs(c1, values, gen, "positive")
    a, b, D = _fit_normaliser(c1, values, nodes, env)
    typical = float(D.abs().median())
    if abs(b) <= 1e-10 * typical:  # rounding noise of the fit, not an epsilon
        b = 0.0
    if b > 0.0:
        s = (b / typical) ** 0.5
        env = {n: (x * s if n in (cand.q, cand.k) else x) for n, x in env.items()}
        a, b, _ = _fit_normaliser(c1, values, nodes, env)
    return replace(cand, scale=1.0, norm_a=_snap(a), norm_b=_snap(b))


def _fit_normaliser(c1: Candidate, values: Values, nodes: list[Node], env: dict) -> tuple[float, float, torch.Tensor]:
    env = dict(env)
    env[c1.v] = torch.ones_like(env[c1.v])
    F, _ = _run(c1, values, nodes, env)
    D = _denominator(c1, env)
    x, y = (1.0 / D).flatten(), (1.0 / F).flatten()
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ProbeFailed("normalised form: the region or the op's normaliser is not finite on positive inputs")
    A = torch.stack([torch.ones_like(x), x], dim=1)
    sol = torch.linalg.lstsq(A, y[:, None]).solution[:, 0]
    inv_a, b_over_a = float(sol[0]), float(sol[1])
    if inv_a == 0.0:
        raise ProbeFailed("normalised form: could not fit the factor")
    return 1.0 / inv_a, b_over_a / inv_a, D


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
