"""Writes into a tensor (`x[..., idx] = y`, `x.add_(y)`, index_put_): exact on a slice when they run along other dims.

A write keeps positions apart when every position of the destination takes its value from the
same position of the source (or from a value broadcast over the positions), the written dims are
not the sequence, and the destination is a view of a tensor that carries the sequence itself:
each rank then writes its own positions, which is its slice of the whole model's write. M-RoPE's
rotary tables (Qwen3.5) copy the H and W frequencies into interleaved features of the T table so.
"""

from __future__ import annotations

import torch
from torch import fx

from lasp_fx.passes.shard.halo import HALO
from lasp_fx.passes.shard.rules import ShardError

aten = torch.ops.aten
_HINT = "Write along feature dimensions only, or compute this outside the parallelized model"


def _val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _write(ctx, node):
    """copy_, fill_, zero_, masked_fill_ and in-place pointwise ops (x.add_(y) is x.copy_(x + y))."""
    dst = node.args[0]
    _check_destination(ctx, node, dst)
    for src in node.all_input_nodes:
        if src is not dst and isinstance(_val(src), torch.Tensor):
            _check_source(ctx, node, dst, src, list(range(_val(dst).dim())))


def _index_put(ctx, node):
    """x[..., idx] = y with index tensors: the indices and the indexed dims keep off the sequence."""
    dst, indices, values = node.args[0], node.args[1], node.args[2]
    for ix in indices:
        if ix is not None and ctx.seq_dims(ix):
            raise ShardError(node, "writes at indices computed along the sequence", _HINT)
    written, dim = [], 0
    for ix in indices:  # a boolean mask index covers as many dims as it has
        width = _val(ix).dim() if ix is not None and _val(ix).dtype == torch.bool else 1
        if ix is not None:
            written += range(dim, dim + width)
        dim += width
    if set(written) & set(ctx.seq_dims(dst)):
        raise ShardError(node, "writes at chosen positions of the sequence dimension", _HINT)
    if node.target is aten.index_put_.default:  # index_put makes a new tensor: no view of it is written
        _check_destination(ctx, node, dst)
    _check_source(ctx, node, dst, values, _indexed_layout(_val(dst).dim(), written))


def _indexed_layout(ndim: int, written: list[int]) -> list[int | None]:
    """The dims of `dst[indices]` as dst's dims (None: the indices' own dims), by torch's rule:
    indexed dims next to each other stay in place, apart they go first."""
    if not written:
        return list(range(ndim))
    rest = [d for d in range(ndim) if d not in written]
    if written == list(range(written[0], written[-1] + 1)):
        return rest[:written[0]] + [None] + rest[written[0]:]
    return [None] + rest


def _check_source(ctx, node, dst, src, layout: list[int | None]):
    """Every sequence dim of the source lands on a sequence dim of the destination (broadcast from the right)."""
    seq_dst = set(ctx.seq_dims(dst))
    shift = len(layout) - (_val(src).dim() if _val(src) is not None else 0)
    for d in ctx.seq_dims(src):
        if shift + d < 0 or layout[shift + d] not in seq_dst:
            raise ShardError(node, "writes values that run along the sequence into dims that do not", _HINT)


def _check_destination(ctx, node, dst):
    """The destination and every tensor it is a view of carry the sequence: the write lands in the
    rank's own positions, never in a table shared by all positions (`table[:s] = x`) or in a tensor
    padded with its neighbours' positions (their own writes would not reach this copy; a causal
    conv's extended output is only ever cut back to the local positions)."""
    while isinstance(dst, fx.Node):
        if not ctx.seq_dims(dst):
            raise ShardError(node, "writes positions of the sequence into a tensor that does not carry it", _HINT)
        if HALO in dst.meta and dst.target is not aten.conv1d.default:
            raise ShardError(node, "writes into a tensor padded along the sequence, whose pad holds the "
                             "neighbouring rank's positions on a slice", _HINT)
        t = dst.target
        if dst.op != "call_function" or not isinstance(t, torch._ops.OpOverload) or not t.is_view:
            return
        dst = dst.args[0]


# inside a tile or rows in permuted order (tiles.py, permutations.py): they refuse what would mix positions
_write.keeps_positions = _index_put.keeps_positions = True

RULES = {
    **{op: _write for op in (aten.copy_.default, aten.fill_.Scalar, aten.fill_.Tensor, aten.zero_.default,
                             aten.masked_fill_.Scalar, aten.masked_fill_.Tensor)},
    aten.index_put_.default: _index_put,
    aten.index_put.default: _index_put,
}
