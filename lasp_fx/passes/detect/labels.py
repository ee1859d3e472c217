"""Index labels of tensor contractions (matmul, bmm, mm, einsum) and walks back through layout ops.

Every contraction is described like an einsum: one label per dim of each operand and of the
result. The detectors reason with labels ("the row label of q k^T", "the key label that the
second product contracts") instead of with the many spellings of the same product.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from torch.fx import Node

from lasp_fx.passes.graph import aten, shape

_BATCH = string.ascii_uppercase


@dataclass(frozen=True)
class Contraction:
    """`node` computes einsum(",".join(inputs) + "->" + output, *operands)."""

    node: Node
    operands: tuple[Node, ...]
    inputs: tuple[str, ...]
    output: str

    def contracted(self) -> set[str]:
        return set("".join(self.inputs)) - set(self.output)


def contraction(node: Node) -> Contraction | None:
    """The einsum-style description of a matmul / bmm / mm / einsum node, or None."""
    if node.op != "call_function":
        return None
    if node.target in (aten.matmul.default, aten.bmm.default, aten.mm.default):
        a, b = node.args[:2]
        sa, sb = shape(a), shape(b)
        if sa is None or sb is None or len(sa) < 2 or len(sb) < 2:
            return None
        nb = max(len(sa), len(sb)) - 2
        batch = _BATCH[:nb]
        la = batch[nb - (len(sa) - 2):] + "ik"
        lb = batch[nb - (len(sb) - 2):] + "kj"
        return Contraction(node, (a, b), (la, lb), batch + "ij")
    if node.target is aten.einsum.default:
        return _einsum(node)
    return None


def _einsum(node: Node) -> Contraction | None:
    eq, ops = node.args[0].replace(" ", ""), tuple(node.args[1])
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ops) or any(shape(o) is None for o in ops):
        return None
    ell = max((len(shape(o)) - len(t.replace("...", "")) for o, t in zip(ops, terms) if "..." in t), default=0)
    fill = _BATCH[:ell]
    terms = [t.replace("...", fill[ell - (len(shape(o)) - len(t.replace("...", ""))):]) for o, t in zip(ops, terms)]
    if "->" not in eq:
        letters = "".join(terms)
        out = fill + "".join(sorted(c for c in set(letters) - set(fill) if letters.count(c) == 1))
    else:
        out = out.replace("...", fill)
    return Contraction(node, ops, tuple(terms), out)


def sizes(c: Contraction) -> dict[str, int]:
    """Label -> size (the largest size seen, so broadcast dims of size 1 take the real size)."""
    out: dict[str, int] = {}
    for op, lab in zip(c.operands, c.inputs):
        for ch, n in zip(lab, shape(op)):
            out[ch] = max(out.get(ch, 1), n)
    return out


def strip_layout(node: Node, labels: str) -> tuple[Node, str, float]:
    """Walk back from `node` (with one label per dim) through transposes, permutes, copies and
    multiplications by Python numbers. Returns (base node, labels of its dims, the product of
    the scalar factors passed)."""
    factor = 1.0
    while node.op == "call_function":
        t, args = node.target, node.args
        if t is aten.transpose.int:
            n = len(labels)
            a, b = args[1] % n, args[2] % n
            lab = list(labels)
            lab[a], lab[b] = lab[b], lab[a]
            labels = "".join(lab)
        elif t is aten.mT.default or t is aten.t.default:
            labels = labels[:-2] + labels[-1] + labels[-2] if len(labels) >= 2 else labels
        elif t is aten.permute.default:
            dims = [d % len(labels) for d in args[1]]
            lab = [""] * len(labels)
            for i, d in enumerate(dims):
                lab[d] = labels[i]
            labels = "".join(lab)
        elif t in (aten.clone.default, aten.contiguous.default, aten.alias.default):
            pass
        elif t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar) and _is_number(args[1]):
            factor = factor * args[1] if t in (aten.mul.Tensor, aten.mul.Scalar) else factor / args[1]
        elif t in (aten.mul.Tensor, aten.mul.Scalar) and _is_number(args[0]):
            factor, args = factor * args[0], (args[1],)
        else:
            break
        node = args[0]
        if not isinstance(node, Node):
            break
    return node, labels, float(factor)


def strip_head_repeat(node: Node, labels: str) -> tuple[Node, str]:
    """Walk back through a repeat of kv heads (GQA): `repeat_interleave(x, G, dim)` or
    `x.unsqueeze(j).expand(..., G, ...).reshape(...)` merging dims j-1 and j. The repeated dim
    keeps its label on the smaller base."""
    if node.op != "call_function":
        return node, labels
    t, args = node.target, node.args
    if t is aten.repeat_interleave.self_int and len(args) >= 3 and isinstance(args[2], int):
        return strip_head_repeat(args[0], labels)
    if t in (aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        src = args[0]
        if src.op == "call_function" and src.target is aten.clone.default:
            src = src.args[0]
        if src.op == "call_function" and src.target is aten.expand.default:
            un = src.args[0]
            if un.op == "call_function" and un.target is aten.unsqueeze.default:
                j = un.args[1] % len(shape(un))
                se, so = shape(src), shape(node)
                if j >= 1 and list(so) == list(se[: j - 1]) + [se[j - 1] * se[j]] + list(se[j + 1:]):
                    return strip_head_repeat(un.args[0], labels)
    return node, labels


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
