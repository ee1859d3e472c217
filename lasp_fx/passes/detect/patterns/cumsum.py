"""The "cumsum" family (normalised or not): the running sum of k (x) v contracted with q.

    kv = cumsum(k[..., :, None] * v[..., None, :], dim=seq);  o = einsum("...d,...de->...e", q, kv)
    o  = o / (q . cumsum(k) + eps)                               (normalised, optional)

The anchor is a cumsum over a dim of an outer product, whose labels name the sequence, key and
value features and batch dims.
"""

from __future__ import annotations

import string

from torch.fx import Node

from lasp_fx.passes.detect.context import Context
from lasp_fx.passes.graph import aten, descendants, shape
from lasp_fx.passes.detect.labels import contraction, strip_head_repeat, strip_layout
from lasp_fx.passes.match import Candidate, Layout, NearMiss

FAMILY = "cumsum"
_LETTERS = string.ascii_uppercase


def _aligned(node: Node, ndim: int, letters: str) -> str:
    """Labels of a node broadcast (right-aligned) against a tensor with `letters`; size-1 dims
    get '1'."""
    sh = shape(node)
    lab = letters[ndim - len(sh):]
    return "".join("1" if n == 1 else ch for ch, n in zip(lab, sh))


def _outer(X: Node, letters: str) -> tuple[tuple[Node, str], tuple[Node, str]] | None:
    """The two factors of an outer product and their labels in X's letters."""
    if X.target is aten.mul.Tensor and all(isinstance(a, Node) for a in X.args[:2]):
        a, b = X.args[:2]
        return (a, _aligned(a, len(letters), letters)), (b, _aligned(b, len(letters), letters))
    c = contraction(X)
    if c is not None and len(c.operands) == 2 and not c.contracted():
        to_x = dict(zip(c.output, letters))
        return tuple((op, "".join(to_x[ch] for ch in lab)) for op, lab in zip(c.operands, c.inputs))
    return None


def _query(C: Node, letters: str, feat_k: str) -> tuple[Node, str, Node, str] | None:
    """(q node, q labels, output node, output labels) of the contraction of C with q over feat_k."""
    for u in C.users:
        c = contraction(u)
        if c is not None and len(c.operands) == 2 and C in c.operands:
            i = c.operands.index(C)
            to_x = dict(zip(c.inputs[i], letters))
            if c.contracted() != {c.inputs[i][letters.index(feat_k)]}:
                continue
            q_lab = "".join(to_x.get(ch, "1") for ch in c.inputs[1 - i])
            o_lab = "".join(to_x.get(ch, "1") for ch in c.output)
            return c.operands[1 - i], q_lab, u, o_lab
        if u.target is aten.mul.Tensor and len(u.users) == 1:
            other = next(a for a in u.args[:2] if a is not C)
            s = next(iter(u.users))
            if isinstance(other, Node) and s.target is aten.sum.dim_IntList and len(s.args[1]) == 1:
                d = s.args[1][0] % len(letters)
                keep = s.args[2] if len(s.args) > 2 else s.kwargs.get("keepdim", False)
                if letters[d] == feat_k and not keep:
                    return other, _aligned(other, len(letters), letters), s, letters[:d] + letters[d + 1:]
    return None


def _layout(labels: str, beta: str, seq: str, feat: str) -> Layout | None:
    if seq not in labels or feat not in labels:
        return None
    return Layout(tuple(labels.index(b) if b in labels else None for b in beta), labels.index(seq), labels.index(feat))


def _strip(node: Node, labels: str) -> tuple[Node, str]:
    base, lab, _ = strip_layout(node, labels)
    while base.op == "call_function" and base.target is aten.unsqueeze.default:
        d = base.args[1] % len(lab)
        base, lab = base.args[0], lab[:d] + lab[d + 1:]
        base, lab, _ = strip_layout(base, lab)
    return strip_head_repeat(base, lab)


def find(ctx: Context) -> list[Candidate | NearMiss]:
    found = []
    for C in list(ctx.gm.graph.nodes):
        if C.op == "call_function" and C.target is aten.cumsum.default:
            res = ctx.analyse(FAMILY, C, _analyse, C)
            if res is not None:
                found.append(res)
    return found


def _analyse(ctx: Context, C: Node) -> Candidate | NearMiss | None:
    X, sx = C.args[0], shape(C)
    if not isinstance(X, Node) or sx is None or len(sx) < 3:
        return None
    letters = _LETTERS[: len(sx)]
    seq = letters[C.args[1] % len(sx)]
    outer = _outer(X, letters)
    if outer is None:
        return None
    (a, la), (b, lb) = outer
    only_a = [ch for ch in la if ch not in "1" and ch not in lb]
    only_b = [ch for ch in lb if ch not in "1" and ch not in la]
    if len(only_a) != 1 or len(only_b) != 1:
        return None
    q_info = _query(C, letters, only_a[0]) or _query(C, letters, only_b[0])
    if q_info is None:
        return ctx.near_miss(FAMILY, C, "found a running sum of k v^T but no contraction with q over k's features")
    qn, q_lab, out, o_lab = q_info
    if only_a[0] not in q_lab:  # q contracts b's feature: b is k
        (a, la), (b, lb), only_a, only_b = (b, lb), (a, la), only_b, only_a
    fk, fv = only_a[0], only_b[0]
    beta = "".join(ch for ch in letters if ch not in (seq, fk, fv))
    qb, q_lab = _strip(qn, q_lab)
    kb, k_lab = _strip(a, la)
    vb, v_lab = _strip(b, lb)
    lays = [_layout(q_lab, beta, seq, fk), _layout(k_lab, beta, seq, fk), _layout(v_lab, beta, seq, fv),
            _layout(o_lab, beta, seq, fv)]
    if None in lays or len({qb, kb, vb}) < 3:
        return ctx.near_miss(FAMILY, C, "found a running sum of k v^T but could not tell q, k and v apart")
    normalised = False
    if len(out.users) == 1:
        u = next(iter(out.users))
        if u.target is aten.div.Tensor and u.args[0] is out and isinstance(u.args[1], Node):
            den = u.args[1]
            if den in descendants([qb]) and den in descendants([kb]) and shape(u) == shape(out):
                out, normalised = u, True
    cand = Candidate(
        family=FAMILY, anchor=C, q=qb, k=kb, v=vb, out=out, q_layout=lays[0], k_layout=lays[1],
        v_layout=lays[2], out_layout=lays[3], beta=tuple(sx[letters.index(ch)] for ch in beta),
        seq_len=sx[letters.index(seq)], normalised=normalised,
    )
    return ctx.try_options("normalised" if normalised else FAMILY, [cand])
