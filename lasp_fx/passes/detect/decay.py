"""Reading the causal mask: is it causal, which decay does it apply, and where does the decay come from.

`analyse_mask` looks at the mask M = f(ones) of the score chain ([B, H, T, T], float64):
M[i, j] = scale * exp(G_i - G_j) for j <= i and 0 above the diagonal (each row maybe divided by a
power of its sum, as RetNet normalises its decay mask). `decay_options` then finds
the graph node the decay is computed from (a per-head parameter or buffer for a constant decay,
a per-token tensor for a gate) so the rewrite can compute the op's log-decay from it in the graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch.fx import Node

from lasp_fx.passes import emit
from lasp_fx.passes.graph import LAYOUT_OPS, aten, ancestors, shape, val
from lasp_fx.passes.match import Candidate, Decay, Layout


class NotADecay(Exception):
    """The mask is not scale * causal decay; the message says what it is instead."""


@dataclass
class MaskInfo:
    kind: str  # "none" | "const" | "gate"
    log_lambda: torch.Tensor | None  # [B, H] for "const"
    log_gate: torch.Tensor | None  # [B, H, T - 1] (tokens 1..T-1) for "gate"
    row_power: float = 0.0  # rows scaled by (their sum of decays) ** -row_power (RetNet's 1 / sqrt)


def analyse_mask(M: torch.Tensor, rel_tol: float = 1e-6) -> MaskInfo:
    """Classify a canonical mask [B, H, T, T] (rows = queries, columns = keys); `rel_tol` bounds
    the rounding of the mask's own entries (1e-6, or more for a mask held in float32)."""
    big = M.abs().max()
    if big == 0:
        raise NotADecay("the mask is zero everywhere")
    tol = 1e-9 * float(big)
    if torch.triu(M, 1).abs().max() > tol:
        if torch.tril(M, -1).abs().max() <= tol:
            raise NotADecay("the mask keeps the future and drops the past (anti-causal)")
        raise NotADecay("the mask is not causal: queries see later keys")
    diag = M.diagonal(dim1=-2, dim2=-1)
    if (diag[..., 0] - diag[0, 0, 0]).abs().max() > tol:
        raise NotADecay("the diagonal of the mask is not one constant (a per-head scale)")
    if float(diag[0, 0, 0]) == 0.0 or (diag == 0).any():
        raise NotADecay("the mask removes the diagonal (queries do not see their own key)")
    if (diag - diag[..., :1]).abs().max() <= tol:
        return _decay(torch.tril(M / diag[0, 0, 0]), rel_tol)
    info = _decay(torch.tril(M / diag[..., :, None]), rel_tol)  # each row by its own diagonal
    info.row_power = _row_power(diag / diag[..., :1], torch.tril(M / diag[..., :, None]).sum(-1), rel_tol)
    if info.kind == "gate":
        raise NotADecay("the rows of the mask are scaled and its decay depends on the data")
    if info.kind == "const" and (info.log_lambda.abs() < 1e-9).any():
        raise NotADecay("the rows of the mask are scaled and a head has no decay")
    return info


def _row_power(scale: torch.Tensor, row_sum: torch.Tensor, rel_tol: float) -> float:
    """p with scale_i = row_sum_i ** -p for every row (the diagonal of a mask whose rows are
    divided by a power of their sums), or NotADecay."""
    use = row_sum > 1 + 1e-3
    if not use.any():
        raise NotADecay("the diagonal of the mask is not one constant (a per-position scale)")
    p = float(torch.median(-torch.log(scale[use]) / torch.log(row_sum[use])))
    p = round(p * 64) / 64 if abs(p * 64 - round(p * 64)) < 1e-6 else p  # 1/2, 1: exact where they are
    if (scale - row_sum ** -p).abs().max() > 10 * rel_tol * float(scale.abs().max()):
        raise NotADecay("the diagonal of the mask is not one constant, nor a power of its rows' sums (a "
                        "per-position scale)")
    return p


def _decay(R: torch.Tensor, rel_tol: float) -> MaskInfo:
    """R: the causal mask with a unit diagonal."""
    T = R.shape[-1]
    if (R - torch.tril(torch.ones_like(R))).abs().max() <= 1e-9 * float(R.abs().max()):
        return MaskInfo("none", None, None)
    sub = R.diagonal(offset=-1, dim1=-2, dim2=-1)
    if T < 2 or (sub <= 0).any():
        raise NotADecay("the mask zeroes entries below the diagonal (a window or a block mask, not a decay)")
    a = torch.log(sub)  # exp(a_i) = R[i, i-1]
    G = torch.cat([torch.zeros_like(a[..., :1]), torch.cumsum(a, -1)], -1)
    expect = torch.tril(torch.exp(G[..., :, None] - G[..., None, :]))
    if (expect - R).abs().max() > rel_tol * float(R.abs().max()):
        raise NotADecay("the mask is causal but not of the form exp(G_i - G_j) (not a decay)")
    if (a - a[..., :1]).abs().max() <= rel_tol * max(1.0, float(a.abs().max())):
        return MaskInfo("const", a[..., 0], None)
    return MaskInfo("gate", None, a)


def _numel(node: Node) -> int:
    s = shape(node)
    return -1 if s is None else math.prod(s)


def _is_float(node: Node) -> bool:
    v = val(node)
    return v is not None and v.is_floating_point()


def frontier(sides: list[Node], beta: tuple[int, ...], T: int) -> tuple[list[Node], list[Node]]:
    """Nodes feeding the mask that hold at most one value per head (const-decay sources) and at
    most one per head and token (gate sources), each at the point where it meets T x T tensors."""
    nb = math.prod(beta) if beta else 1
    A = ancestors(sides)
    per_head, per_token = [], []
    for n in A:
        if not _is_float(n) or _numel(n) < 1:
            continue
        users = [u for u in n.users if u in A or u in sides]
        size = _numel(n)
        if size <= nb and any(_numel(u) > nb for u in users) and (size > 1 or _from_sources(n)):
            per_head.append(n)
        elif T in shape(n) and size <= nb * T and any(_numel(u) > nb * T for u in users):
            per_token.append(_gate_root(n, T))
    return per_head, list(dict.fromkeys(per_token))


def _from_sources(n: Node) -> bool:
    return any(a.op in ("placeholder", "get_attr") for a in ancestors([n]))


def _gate_root(n: Node, T: int) -> Node:
    """Walk back through layout ops and a cumsum over the sequence to the per-token log-decay."""
    while n.op == "call_function" and n.all_input_nodes:
        src = n.args[0]
        if n.target in LAYOUT_OPS and isinstance(src, Node) and _numel(src) == _numel(n):
            n = src
        elif n.target is aten.cumsum.default and shape(n)[n.args[1]] == T:
            return src
        else:
            break
    return n


def right_aligned(p: Node, score_labels: str, beta_labels: str) -> Layout | None:
    """Layout of a node broadcast against the scores (right-aligned), or None if it does not fit."""
    sp = shape(p)
    off = len(score_labels) - len(sp)
    if off < 0:
        return None
    batch: list[int | None] = [None] * len(beta_labels)
    for i, n in enumerate(sp):
        lab = score_labels[off + i]
        if lab in beta_labels:
            batch[beta_labels.index(lab)] = i if n != 1 else None
        elif n != 1:
            return None
    return Layout(tuple(batch), None, None)


def gate_layouts(g: Node, beta: tuple[int, ...], T: int) -> list[Layout]:
    """Ways to read a per-token node as (batch dims aligned right to beta, sequence)."""
    sg = shape(g)
    out = []
    for t in (i for i, n in enumerate(sg) if n == T):
        rest = [i for i in range(len(sg)) if i != t]
        off = len(beta) - len(rest)
        if off < 0:
            if any(sg[i] != 1 for i in rest[: -off]):
                continue
            rest, off = rest[-off:], 0
        batch: list[int | None] = [None] * len(beta)
        ok = True
        for j, i in enumerate(rest):
            if sg[i] == 1:
                continue
            ok &= sg[i] == beta[off + j]
            batch[off + j] = i
        if ok:
            out.append(Layout(tuple(batch), t, None))
    return out


def _fit_alpha(target: torch.Tensor, psi: torch.Tensor) -> float | None:
    ok = psi.abs() > 1e-12
    if not ok.any():
        return None
    return float(torch.median(target[ok] / psi[ok]))


def decay_options(info: MaskInfo, cand: Candidate, values, sides: list[Node], score_labels: str,
                  beta_labels: str, learnable: set[Node]) -> list[Decay]:
    """Decay descriptions to try (most specific first); the probe keeps the first that verifies."""
    if info.kind == "none":
        return [Decay()]
    per_head, per_token = frontier(sides, cand.beta, cand.seq_len)
    opts: list[Decay] = []
    if info.kind == "const":
        for p in per_head:
            lay = right_aligned(p, score_labels, beta_labels)
            if lay is not None:
                opts += _fitted(cand, values, Decay("const", p, lay), info.log_lambda, learnable)
        lam = info.log_lambda
        if (lam - lam[:1]).abs().max() <= 1e-12 * max(1.0, float(lam.abs().max())):
            opts.append(Decay("const", None, None, value=lam[0].clone()))
    else:
        for g in per_token:
            for lay in gate_layouts(g, cand.beta, cand.seq_len):
                opts += _fitted(cand, values, Decay("gate", g, lay), info.log_gate, learnable)
    return opts


def _fitted(cand: Candidate, values, d: Decay, target: torch.Tensor, learnable: set[Node]) -> list[Decay]:
    real = values[d.node]
    out = []
    for psi in ("log", "id") if bool((real > 0).all()) else ("id",):
        trial = Decay(d.kind, d.node, d.layout, psi, 1.0)
        c = _with_decay(cand, trial)
        try:
            ld = emit.log_decay(emit.Eager(), c, {d.node: real}, torch.float64)
        except emit.NotRepresentable:
            return []
        if d.kind == "const":
            ref = target[0] if ld.dim() == 1 else target
            got = ld if ld.dim() == 1 else ld[:, 0, :]
            alpha = _fit_alpha(ref.flatten(), got.flatten())
        else:  # target [B, H, T-1] vs ld [B, T, H]
            alpha = _fit_alpha(target.flatten(), ld.transpose(1, 2)[..., 1:].flatten())
        if alpha is not None:
            trial.alpha = alpha
            trial.learnable = any(a in learnable for a in ancestors([d.node]))
            out.append(trial)
    return out


def _with_decay(cand: Candidate, d: Decay) -> Candidate:
    return replace(cand, decay=d)
