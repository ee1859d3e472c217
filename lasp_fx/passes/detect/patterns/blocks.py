"""The "block-loop" family: an explicit loop over chunks (unrolled by capture) that computes each
chunk's output as an intra-chunk masked product plus a product with a carried state, and
concatenates the chunks along the sequence.

Anchor: a `cat` whose first piece depends on a verified quadratic candidate (the intra-chunk
term) whose q, k and v are slices, along the sequence, of three whole tensors. The candidate
for the whole loop takes those tensors, the chunk's layouts and decay, and the concatenation as
its output; the probe then checks the entire unrolled loop against the op on the full sequence.
"""

from __future__ import annotations

import operator
from dataclasses import replace

from torch.fx import Node

from lasp_fx.passes.detect.context import Context
from lasp_fx.passes.graph import aten, ancestors, shape, topo_order
from lasp_fx.passes.match import Candidate, NearMiss
from lasp_fx.passes.detect.patterns import quadratic

FAMILY = "block-loop"


def unslice(node: Node) -> tuple[Node, int] | None:
    """(whole tensor, dim) when `node` is a slice / narrow / split piece of another tensor."""
    if node.op != "call_function":
        return None
    if node.target in (aten.slice.Tensor, aten.narrow.default):
        base, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
        inner = unslice(base)
        return (inner[0], dim % len(shape(base))) if inner and shape(base) == shape(inner[0]) else (base, dim % len(shape(base)))
    if node.target is operator.getitem:
        src = node.args[0]
        if src.op == "call_function" and src.target in (aten.split.Tensor, aten.chunk.default, aten.split_with_sizes.default):
            dim = src.args[2] if len(src.args) > 2 else src.kwargs.get("dim", 0)
            return src.args[0], dim % len(shape(src.args[0]))
    return None


def find(ctx: Context) -> list[Candidate | NearMiss]:
    found = []
    for Z in list(ctx.gm.graph.nodes):
        if Z.op == "call_function" and Z.target is aten.cat.default and len(Z.args[0]) >= 2:
            res = ctx.analyse(FAMILY, Z, _analyse, Z)
            if res is not None:
                found.append(res)
    return found


def _analyse(ctx: Context, Z: Node) -> Candidate | NearMiss | None:
    first = Z.args[0][0]
    order = topo_order(ctx.gm.graph)
    # nearest first: the chunk's own product, never one of an earlier layer the chunk depends on
    for mm in sorted(ancestors([first]), key=order.__getitem__, reverse=True):
        sp = quadratic.score_product(mm)
        if sp is None:
            continue
        chunk = quadratic._analyse(ctx, *sp)
        if isinstance(chunk, Candidate):
            return _whole(ctx, Z, first, chunk)
    return None


def _whole(ctx: Context, Z: Node, first: Node, c0: Candidate) -> Candidate | NearMiss | None:
    pieces = [unslice(n) for n in (c0.q, c0.k, c0.v)]
    if None in pieces:
        return None  # the chunk's q, k, v are whole tensors: not a block loop
    (qb, qd), (kb, kd), (vb, vd) = pieces
    if (qd, kd, vd) != (c0.q_layout.seq, c0.k_layout.seq, c0.v_layout.seq):
        return ctx.near_miss(FAMILY, Z, "a loop over slices of q, k, v, but not along the sequence")
    dim = Z.args[1] if len(Z.args) > 1 else 0
    if shape(first) != shape(c0.out) or dim % len(shape(Z)) != c0.out_layout.seq:
        return ctx.near_miss(FAMILY, Z, "the loop's chunk outputs are not concatenated along the sequence")
    decay = c0.decay
    if decay.node is not None and unslice(decay.node) is not None:
        decay = replace(decay, node=unslice(decay.node)[0])
    cand = replace(
        c0, family=FAMILY, q=qb, k=kb, v=vb, out=Z, seq_len=shape(Z)[c0.out_layout.seq], decay=decay,
        scale=1.0, notes=[f"{len(Z.args[0])} chunks of {c0.seq_len} tokens"],
    )
    return ctx.try_options(FAMILY, [cand])
