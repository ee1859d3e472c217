"""The "quadratic" family: (q k^T, masked causally and maybe decayed) v, and its normalised forms.

Anchor: a product S = q k^T whose row and column labels have the same size T. Follow S forward
through elementwise ops whose other inputs do not depend on S (the "mask chain", ending at P);
then find the product P v that contracts P's key label. The mask M = chain(ones) is read by
`decay.analyse_mask`; normalisation by the row sums of P or by q . cumsum(k) is recognised
around the second product and fitted by the probe.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.fx import Node

from lasp_fx.passes.detect.context import Context
from lasp_fx.passes.detect.decay import NotADecay, analyse_mask, decay_options
from lasp_fx.passes.graph import aten, ancestors, descendants, is_elementwise, shape, val
from lasp_fx.passes.detect.labels import Contraction, contraction, sizes, strip_head_repeat, strip_layout
from lasp_fx.passes.match import Candidate, Layout, NearMiss

FAMILY = "quadratic"
FEAT = "@"  # label of the value feature dim in score-label space
SOFTMAX = {aten._softmax.default, aten.softmax.int, aten._safe_softmax.default, aten._log_softmax.default,
           aten.log_softmax.int}
_CHAIN_EXTRA = {aten._to_copy.default, aten.to.dtype, aten.type_as.default, aten.dropout.default,
                aten.contiguous.default, aten.alias.default}
_NON_LINEAR = {aten.exp.default, aten.sigmoid.default, aten.relu.default, aten.elu.default, aten.tanh.default}


def score_product(node: Node) -> tuple[Contraction, str, str, str] | None:
    """(contraction, row, col, feature label) when `node` is a q k^T with square T x T scores."""
    c = contraction(node)
    if c is None or len(c.operands) != 2:
        return None
    a, b = c.inputs
    row = set(a) & set(c.output) - set(b)
    col = set(b) & set(c.output) - set(a)
    red = c.contracted()
    if len(row) != 1 or len(col) != 1 or len(red) != 1:
        return None
    (r,), (s,), (d,) = row, col, red
    n = sizes(c)
    if n[r] != n[s] or n[r] < 2:
        return None
    return c, r, s, d


def mask_chain(S: Node) -> list[Node]:
    """S and the elementwise ops applied to it alone (masks, decays, scales), in order."""
    chain = [S]
    while True:
        users = [u for u in chain[-1].users if u.target not in _LIKE]  # zeros_like(S) reads a shape
        if len(users) != 1:
            break
        u = users[0]
        if not (is_elementwise(u) or u.target in _CHAIN_EXTRA) or shape(u) is None:
            break
        if len(shape(u)) != len(shape(S)):
            break
        others = [a for a in u.all_input_nodes if a is not chain[-1]]
        if any(S in ancestors([a], stop=_like_ops(a)) for a in others):
            break
        chain.append(u)
    return chain


_LIKE = {aten.zeros_like.default, aten.ones_like.default, aten.full_like.default, aten.empty_like.default}


def _like_ops(node: Node) -> set[Node]:
    """zeros_like(S) and friends read only S's shape: a constant, not a dependency."""
    return {n for n in ancestors([node]) if n.op == "call_function" and n.target in _LIKE}


def second_product(P: Node) -> tuple[Node, Contraction, Node, list[Node]] | None:
    """The first product downstream of P that takes a P-derived operand (breadth first)."""
    level = [(P, [])]
    for _ in range(6):
        nxt = []
        for n, path in level:
            for u in n.users:
                c = contraction(u)
                if c is not None and len(c.operands) == 2 and n in c.operands:
                    return u, c, n, path
                if u.op == "call_function":
                    nxt.append((u, path + [u]))
        level = nxt
    return None


def _layout(labels: str, beta: str, seq: str, feat: str) -> Layout:
    return Layout(tuple(labels.index(b) if b in labels else None for b in beta), labels.index(seq), labels.index(feat))


# (I + tril(beta k k^T))^-1: the UT transform of chunked delta rules (DeltaNet, gated DeltaNet)
_SOLVES = {aten.linalg_solve_triangular.default, aten.triangular_solve.default, aten.linalg_inv_ex.default}


def find(ctx: Context) -> list[Candidate | NearMiss]:
    found: list[Candidate | NearMiss] = []
    for node in list(ctx.gm.graph.nodes):
        sp = score_product(node)
        if sp is not None:
            found.append(ctx.analyse(FAMILY, node, _analyse, *sp))
    return [f for f in found if f is not None]


def _analyse(ctx: Context, c1: Contraction, row: str, col: str, d: str) -> Candidate | NearMiss | None:
    S = c1.node
    chain = mask_chain(S)
    P = chain[-1]
    second = second_product(P)
    if second is None:
        return None  # scores that never meet a value product (e.g. a similarity output)
    m2, c2, operand, path = second
    passed = {n.target for n in chain[1:] + path}
    if passed & SOFTMAX:
        return ctx.near_miss("softmax", S, "the scores go through softmax: softmax attention, not linear")
    normalised, den_steps = False, ()
    if path:
        if not _normalises_rows(path, P, col, c1.output):
            names = ", ".join(str(n.target).replace("aten.", "") for n in path)
            if any(n.target in _SOLVES for n in path):
                return ctx.near_miss("delta-rule", S, f"a delta rule: the scores pass through {names} (the state's "
                                     "transition is a matrix, not a scalar decay: not linear attention)")
            return ctx.near_miss(FAMILY, S, f"found q@k^T but the scores pass through {names} before the product with v")
        normalised, den_steps = True, _den_steps(path[0], P, c1.output.index(col))
    nl = passed & _NON_LINEAR
    if nl and normalised:
        return ctx.near_miss("softmax", S, "the scores go through exp and a row normalisation: softmax attention")

    # label bookkeeping: express the second product's labels in the score labels
    i = c2.operands.index(operand)
    P_lab, V_lab = c2.inputs[i], c2.inputs[1 - i]
    if len(P_lab) != len(c1.output):
        return None
    to_s = dict(zip(P_lab, c1.output))
    red2 = c2.contracted()
    if red2 != {P_lab[c1.output.index(col)]}:
        return ctx.near_miss(FAMILY, S, "found q@k^T but the product with v does not sum over the keys")
    feat = [ch for ch in V_lab if ch not in to_s]
    if len(feat) != 1 or feat[0] not in c2.output:
        return None
    to_s[feat[0]] = FEAT
    v_lab = "".join(to_s[ch] for ch in V_lab)
    o_lab = "".join(to_s.get(ch, "?") for ch in c2.output)
    beta = "".join(ch for ch in c1.output if ch not in (row, col))
    if set(o_lab) != set(beta) | {row, FEAT}:
        return None

    out, o_norm = m2, _output_normaliser(m2, c1)
    if o_norm is not None:
        out, normalised = o_norm, True
    qb, q_lab, _ = strip_layout(c1.operands[0], c1.inputs[0])
    kb, k_lab, _ = strip_layout(c1.operands[1], c1.inputs[1])
    kb, k_lab = strip_head_repeat(kb, k_lab)
    vb, v_lab, _ = strip_layout(c2.operands[1 - i], v_lab)
    vb, v_lab = strip_head_repeat(vb, v_lab)
    pshape = shape(P)
    beta_sizes = tuple(pshape[c1.output.index(b)] for b in beta)
    T = pshape[c1.output.index(row)]
    cand = Candidate(
        family=FAMILY, anchor=S, q=qb, k=kb, v=vb, out=out,
        q_layout=_layout(q_lab, beta, row, d), k_layout=_layout(k_lab, beta, col, d),
        v_layout=_layout(v_lab, beta, col, FEAT), out_layout=_layout(o_lab, beta, row, FEAT),
        beta=beta_sizes, seq_len=T, normalised=normalised, den_steps=den_steps,
    )
    if len({qb, kb, vb}) < 3:
        return ctx.near_miss(FAMILY, S, "q, k and v are not three separate tensors (shared inputs are not supported)")
    if len(chain) == 1:
        return ctx.near_miss(FAMILY, S, "found q@k^T but the scores are not masked: bidirectional (non-causal) attention")
    sides = [a for n in chain[1:] for a in n.all_input_nodes if a not in chain]
    cand = replace(cand, tol=max(cand.tol, 8 * T * _mask_eps(sides)))  # T entries' rounding accumulates
    try:
        M = _mask(ctx, chain, c1.output, beta, row, col, beta_sizes)
        info = analyse_mask(M, cand.tol)
    except NotADecay as e:
        return ctx.near_miss(FAMILY, S, f"found q@k^T but {e}")
    cand = replace(cand, row_power=info.row_power)
    opts = decay_options(info, cand, ctx.values, sides, c1.output, beta, ctx.learnable)
    if not opts:
        return ctx.near_miss(FAMILY, S, f"found a {info.kind} decay but not the tensor it is computed from")
    family = "normalised" if normalised else ("decay-mask" if info.kind != "none" else FAMILY)
    return ctx.try_options(family, [replace(cand, decay=o) for o in opts])


def _mask_eps(sides: list[Node]) -> float:
    """The rounding unit of the least precise float the mask is computed from: a decay held in a
    float32 buffer is exact only to float32's precision after the float64 replay."""
    eps = 0.0
    for n in ancestors(sides):
        v = val(n) if n.op in ("placeholder", "get_attr") else None  # buffers and inputs: replays are float64
        if v is not None and v.is_floating_point() and v.dtype != torch.float64:
            eps = max(eps, torch.finfo(v.dtype).eps)
    return eps if eps <= 1e-6 else 0.0  # bfloat16 / float16 masks: no looser bound, refused if off


def _normalises_rows(path: list[Node], P: Node, col: str, s_lab: str) -> bool:
    """P / (sum of P over the keys [+ eps]) on the way to the value product."""
    if len(path) != 1 or path[0].target not in (aten.div.Tensor, aten.mul.Tensor):
        return False
    div = path[0]
    other = [a for a in div.all_input_nodes if a is not P]
    return len(other) == 1 and any(n.target in (aten.sum.dim_IntList, aten.sum.default) for n in ancestors(other))


_STEPS = {aten.abs.default, aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default,
          aten.detach.default, aten.alias.default}


def _den_steps(div: Node, P: Node, key_dim: int) -> tuple:
    """What P / f(sum of P over the keys) does to the sum, in order: detach, abs, clamp with
    constant bounds (RetNet's `qk / qk.detach().sum(-1, keepdim=True).abs().clamp(min=1)`), for
    the replacement to do the same to its normaliser; () when the divisor is not of that form (the
    probe then judges the plain normalised form)."""
    if div.target is not aten.div.Tensor or div.args[0] is not P or not isinstance(div.args[1], Node):
        return ()
    steps, n = [], div.args[1]
    while n.target in _STEPS:
        if n.target is aten.abs.default:
            steps.append(("abs",))
        elif n.target is not aten.alias.default and n.target is not aten.detach.default:
            lo = n.args[1] if n.target is not aten.clamp_max.default else None
            hi = n.args[1] if n.target is aten.clamp_max.default else (n.args[2] if len(n.args) > 2 else None)
            if isinstance(lo, Node) or isinstance(hi, Node):
                return ()
            steps.append(("clamp", lo, hi))
        elif n.target is aten.detach.default:
            steps.append(("detach",))
        n = n.args[0]
    if n.target is not aten.sum.dim_IntList or list(n.args[1]) not in ([key_dim], [key_dim - len(shape(P))]) \
            or not (len(n.args) > 2 and n.args[2]):
        return ()
    x = n.args[0]
    while x is not P and x.target in (aten.detach.default, aten.alias.default):
        steps += [("detach",)] if x.target is aten.detach.default else []
        x = x.args[0]
    if x is not P:
        return ()
    detach = [("detach",)] if ("detach",) in steps else []  # where it stands does not matter: a sum is linear
    return tuple(detach + [st for st in reversed(steps) if st != ("detach",)])


def _output_normaliser(m2: Node, c1: Contraction) -> Node | None:
    """(P v) / den with den computed from q and k only (q . cumsum k, or P's row sums)."""
    if len(m2.users) != 1:
        return None
    u = next(iter(m2.users))
    if u.target not in (aten.div.Tensor, aten.mul.Tensor) or u.args[0] is not m2 or not isinstance(u.args[1], Node):
        return None
    den = u.args[1]
    qk = descendants(c1.operands[:1]) | descendants(c1.operands[1:2]) | descendants([c1.node])
    if den not in qk or shape(u) != shape(m2):
        return None
    return u


def _mask(ctx: Context, chain: list[Node], s_lab: str, beta: str, row: str, col: str, beta_sizes) -> torch.Tensor:
    """M = chain(ones) as [B, H, T, T] (float64), after checking chain(X) == X * M."""
    S, P = chain[0], chain[-1]
    ones = torch.ones(shape(S), dtype=torch.float64)
    M = ctx.values.evaluate(chain[1:], {S: ones})[P]
    X = torch.randn(shape(S), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = ctx.values.evaluate(chain[1:], {S: X})[P]
    if not torch.isfinite(M).all() or (got - X * M).abs().max() > 1e-9 * max(1.0, float((X * M).abs().max())):
        names = ", ".join(sorted({str(n.target).replace("aten.", "") for n in chain[1:]}))
        raise NotADecay(f"the scores go through a non-linear function ({names})")
    M = M.expand(shape(P))
    perm = [s_lab.index(b) for b in beta] + [s_lab.index(row), s_lab.index(col)]
    M = M.permute(perm)
    b = beta_sizes[0] if beta_sizes else 1
    return M.reshape(b, -1, M.shape[-2], M.shape[-1])
