"""The per-op rules of the sharding pass: which ops are safe on a slice, which get fixed, which are refused.

A rule is `rule(ctx, node)`: it returns when the op is correct on a slice as it is, rewrites the
graph around the node when a fix exists, and raises ShardError otherwise.
"""

from __future__ import annotations

import torch
from torch import fx

from lasp_fx.distributed import seq_ops
from lasp_fx.passes.detect.labels import contraction
from lasp_fx.passes.graph import sizes_as_numbers, source_of
from lasp_fx.passes.shard import op_sets
from lasp_fx.passes.shard.seq_dims import (normalize_dims, position_stride, record_position_stride,
                                           reshape_position_stride)

aten = torch.ops.aten
_BIG = 2**62  # make_fx writes x[:, :] as slice(x, 1, 0, 9223372036854775807)


class ShardError(ValueError):
    """An op mixes positions in a way lasp_fx cannot make sequence-parallel."""

    def __init__(self, node: fx.Node, why: str, hint: str):
        self.op = str(node.target)
        self.source = source_line(node)
        super().__init__(f"{self.op} at {self.source}: {why}. {hint}")


def source_line(node: fx.Node) -> str:
    """`file:line (code)` of the innermost user frame (not torch's, not lasp_fx's) that made the node."""
    where, code = source_of(node)
    if where == "<unknown>":
        return f"graph node {node.name} (no source line recorded)"
    return f"{where} ({code})" if code else where


def _val(node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_REFUSE_HINT = (
    "Sequence parallelism would change what this computes; compute it outside the parallelized "
    "model or keep this model on one device"
)


# ------------------------------------------------------------------------------ safe as they are
def _safe(ctx, node):
    return


def _metadata_assert(ctx, node):
    """torch.export's check of a `.to()` result: dtype, device and layout hold on any slice; a size does not."""
    size, stride = (list(node.args[1:3]) + [None, None])[:2]
    if size is not None or stride is not None:
        raise ShardError(node, "asserts a tensor's size or strides, which differ on each rank's slice",
                         "export the model with the sequence dimension dynamic, or drop the size check")


def _view(ctx, node):
    src, out = _val(node.args[0]), _val(node)
    stride_in = position_stride(node.args[0], ctx.symbols)
    stride = None if stride_in is None else reshape_position_stride(list(src.shape), list(out.shape), ctx.symbols,
                                                                    stride_in)
    if stride is not None:
        record_position_stride(node, stride)  # where positions sit in a merged dim ([B*s*k]: stride k)
    else:
        raise ShardError(
            node,
            f"reshapes {list(src.shape)} -> {list(out.shape)}, cutting the sequence into blocks or mixing "
            "its positions",
            "Chunked forms are recognised only when the whole block computation is linear attention; "
            "reshape only feature dimensions, or merge the sequence with the batch",
        )


def _along_dim(dim_index: int, dim_name: str, what: str):
    """Ops that are safe unless they work along a sequence dimension."""

    def rule(ctx, node):
        x = node.args[0] if node.target is not aten.cat.default else node.args[0][0]
        ndim = _val(x).dim()
        dim = _arg(node, dim_index, dim_name, 0) % max(ndim, 1)
        if dim in ctx.seq_dims(x):
            raise ShardError(node, f"{what} along the sequence dimension {dim}", _REFUSE_HINT)

    return rule


def _slice(ctx, node):
    x = node.args[0]
    dim = _arg(node, 1, "dim", 0) % _val(x).dim()
    start, end, step = _arg(node, 2, "start", 0) or 0, _arg(node, 3, "end", None), _arg(node, 4, "step", 1)
    size_in, size_out = _val(x).shape[dim], _val(node).shape[dim]
    if dim in ctx.seq_dims(x):
        if step == 1 and _same_length(ctx, size_in, size_out):
            return  # the whole dimension (x[:, :n], x[:, -n:]): a no-op on every rank
        if "lasp_fx_halo" in x.meta and _is_seq_length(ctx, size_out):
            return  # cuts a halo-extended tensor back to the local positions
        raise ShardError(node, "slices the sequence dimension", _REFUSE_HINT)
    if ctx.is_seq_size(size_out) and _is_zero(start) and step == 1:
        # table[:s] of a table that does not carry the sequence: a position lookup (learned
        # absolute position embeddings, precomputed rotary tables) -> rows [rank*s, rank*s + s)
        off = ctx.offset(node)
        new_end = ctx.call(node, _add, off, end if isinstance(end, fx.Node) else ctx.length())
        node.args = (x, dim, off, new_end, step)
        return
    if ctx.is_seq_size(size_out):
        raise ShardError(node, "takes a sequence-sized slice of a table at a non-zero start", _REFUSE_HINT)


def _tensor_split(ctx, node):
    """tensor_split at 0 or the full length of the sequence (a split into the whole and empty
    pieces, as HF splits off the tokens a cache keeps when it keeps none): a no-op on every rank."""
    x, indices = node.args[0], node.args[1]
    dim = _arg(node, 2, "dim", 0) % _val(x).dim()
    if dim not in ctx.seq_dims(x):
        return
    n = _val(x).shape[dim]
    if not all(_is_zero(i) or _same_length(ctx, _val(i) if isinstance(i, fx.Node) else i, n) for i in indices):
        raise ShardError(node, "splits the sequence dimension at a position inside it", _REFUSE_HINT)


def _is_seq_length(ctx, size) -> bool:
    """The size is exactly the local sequence length s."""
    return isinstance(size, torch.SymInt) and size.node.expr in ctx.symbols


def _add(a, b):
    return a + b


def _is_zero(x) -> bool:
    return not isinstance(x, fx.Node) and x == 0


def _same_length(ctx, a, b) -> bool:
    """Equal for every sequence length, not only the traced one (no guard is added). The inputs'
    sequence symbols count as one: parallelize gives every sequence input the same local length."""
    if not isinstance(a, torch.SymInt) or not isinstance(b, torch.SymInt):
        return not isinstance(a, torch.SymInt) and not isinstance(b, torch.SymInt) and a == b
    one = {sym: min(ctx.symbols, key=str) for sym in ctx.symbols}
    return (a.node.expr.xreplace(one) - b.node.expr.xreplace(one)).expand() == 0


def _mask(ctx, node):
    """tril / triu of a sequence-by-sequence tensor: an attention mask no rule consumed."""
    if ctx.seq_dims(node.args[0]):
        raise ShardError(
            node,
            "builds a triangular mask over the sequence for an attention that was not recognised",
            "Run lasp_fx.inspect(model, *inputs) to see why the attention was not matched",
        )


def _index(ctx, node):
    """embedding / index_select / gather: safe when the indexed dim does not carry the sequence."""
    if node.target is aten.embedding.default:
        table, dims = node.args[0], (0,)
    elif node.target is aten.index.Tensor:
        table = node.args[0]
        dims = tuple(i for i, ix in enumerate(node.args[1]) if ix is not None)
    else:
        table, dims = node.args[0], (_arg(node, 1, "dim", 0) % _val(node.args[0]).dim(),)
    if set(dims) & set(ctx.seq_dims(table)):
        raise ShardError(node, "indexes into the sequence dimension with computed positions", _REFUSE_HINT)


# ------------------------------------------------------------------------------ contractions
def _contracted(node) -> list[tuple[fx.Node, int]]:
    """(operand, dim) pairs summed over by a matrix product."""
    t = node.target
    if t is aten.linear.default:
        return [(node.args[0], -1)]
    if t in (aten.matmul.default, aten.mm.default, aten.bmm.default):
        a, b = node.args[:2]
        return [(a, -1), (b, -2 if _val(b).dim() > 1 else 0)]
    if t in (aten.addmm.default, aten.baddbmm.default):
        return [(node.args[1], -1), (node.args[2], -2)]
    if t is aten.einsum.default:
        return _einsum_contracted(node)
    return []


def _einsum_contracted(node) -> list[tuple[fx.Node, int]]:
    """The dims an einsum sums over: labels missing from the output, `...` expanded (dims it keeps),
    and a label repeated within one term (a diagonal). Unreadable equations: every dim."""
    c = contraction(node)
    eq = node.args[0]
    if c is None or ("..." in eq and any(ch.isupper() for ch in eq)):  # its ellipsis letters are upper case
        return [(op, d) for op in node.args[1] for d in range(_val(op).dim())]
    return [(op, i) for op, term in zip(c.operands, c.inputs) for i, ch in enumerate(term)
            if ch not in c.output or term.count(ch) > 1]


def _contraction(ctx, node):
    for operand, dim in _contracted(node):
        if dim % _val(operand).dim() in ctx.seq_dims(operand):
            raise ShardError(
                node,
                "sums over the sequence dimension (an attention-like product that was not recognised "
                "as linear or softmax attention)",
                "Run lasp_fx.inspect(model, *inputs) to see why the attention was not matched",
            )


# ------------------------------------------------------------------------------ reductions
def _reduced_dims(node) -> tuple[int, ...]:
    x = _val(node.args[0])
    t = node.target
    if t in (aten.sum.default, aten.mean.default):
        return tuple(range(x.dim()))
    if t in (aten.layer_norm.default, aten.rms_norm.default, aten.native_layer_norm.default):
        return tuple(range(x.dim() - len(node.args[1]), x.dim()))
    if t in (aten.group_norm.default, aten.native_group_norm.default):
        return tuple(range(1, x.dim()))
    if t in (aten.topk.default, aten.sort.default, aten.argsort.default):  # topk(x, k, dim=-1), sort(x, dim=-1)
        return normalize_dims(_arg(node, 2 if t is aten.topk.default else 1, "dim", -1), x.dim())
    dims = _arg(node, 1, "dim", None)
    return normalize_dims(dims, x.dim())


def _reduction(ctx, node):
    if set(_reduced_dims(node)) & set(ctx.seq_dims(node.args[0])):
        raise ShardError(node, "reduces over the sequence dimension", _REFUSE_HINT)


def _sum_or_mean(ctx, node):
    x = node.args[0]
    if not set(_reduced_dims(node)) & set(ctx.seq_dims(x)):
        return
    if node.target in (aten.mean.dim, aten.mean.default):
        _global_mean(ctx, node)  # equal slices: the global mean is the mean of the ranks' means
    else:
        _global_sum(ctx, node)


def _loss(ctx, node):
    """cross_entropy / nll_loss: sums and counts over all ranks, so the mean is the global one."""
    x, target = node.args[0], node.args[1]
    if not ctx.seq_dims(x) and not ctx.seq_dims(target):
        return
    weight, reduction = _arg(node, 2, "weight"), _arg(node, 3, "reduction", 1)
    ignore_index = _arg(node, 4, "ignore_index", -100)
    if reduction == 0:
        return
    if weight is not None:
        raise ShardError(node, "a class-weighted mean loss over the sequence", "Use weight=None or reduction='sum'")
    summed = ctx.call(node, node.target, *((x, target, None, 2) + tuple(node.args[4:])), **node.kwargs)
    total = ctx.call(node, seq_ops.sum_over_ranks, summed, ctx.spec.group_name)
    if reduction == 2:
        ctx.replace(node, total)
        return
    if _val(target).is_floating_point():  # class probabilities: every position counts equally
        _global_mean(ctx, node)
        return
    kept = ctx.call(node, aten.ne.Scalar, target, ignore_index)
    local = ctx.call(node, aten.sum.dim_IntList, kept, None, False, dtype=_val(x).dtype)
    count = ctx.call(node, seq_ops.sum_over_ranks, local, ctx.spec.group_name)
    ctx.replace(node, ctx.call(node, aten.div.Tensor, total, count))


def _global_mean(ctx, node):
    """A mean over equal-sized slices: the mean of the ranks' means."""
    total = ctx.wrap(node, seq_ops.sum_over_ranks, ctx.spec.group_name)
    ctx.wrap(total, aten.div.Tensor, ctx.spec.world_size)


def _global_sum(ctx, node):
    ctx.wrap(node, seq_ops.sum_over_ranks, ctx.spec.group_name)


def _histc(ctx, node):
    """histc over the sequence with fixed bounds: counts add up over the ranks (MoE load balancing)."""
    if not ctx.seq_dims(node.args[0]):
        return
    low, high = _arg(node, 2, "min", 0), _arg(node, 3, "max", 0)
    if low == high:
        raise ShardError(node, "a histogram whose bounds are the data's own minimum and maximum (min == max)",
                         "Pass fixed min and max (e.g. 0 and the number of experts)")
    _global_sum(ctx, node)


def _elementwise_loss(ctx, node):
    """mse / l1 losses: mean or sum over all elements."""
    reduction = _arg(node, 2, "reduction", 1)
    if reduction == 1:
        _global_mean(ctx, node)
    elif reduction == 2:
        _global_sum(ctx, node)


# ------------------------------------------------------------------------------ positions
def _arange(ctx, node):
    """arange(s) of positions -> arange(rank*s, rank*s + s): rotary angles, ALiBi, decay exponents.

    Differences of positions (i - j) do not change, absolute positions become global.
    """
    if not ctx.seq_dims(node):
        return
    ctx.wrap(node, aten.add.Tensor, ctx.offset(node))


def check_no_length_as_value(ctx, node):
    """Refuse the local length used as a number (x.sum(1) / n): on a slice it would be s, not P*s."""
    if any(v.node.expr.free_symbols & ctx.symbols for v in sizes_as_numbers(node)):
        raise ShardError(
            node,
            "uses the sequence length as a number; on a slice that is the local length",
            "Use a mean over the sequence dimension instead of dividing by the length",
        )


# ------------------------------------------------------------------------------ registry
RULES = {
    **{op: _view for op in op_sets.VIEWS},
    **{op: _safe for op in op_sets.SHAPE_SAFE | op_sets.POINTWISE_EXTRA},
    **{op: _along_dim(i, n, w) for op, (i, n, w) in op_sets.ALONG.items()},
    **{op: _contraction for op in op_sets.CONTRACTIONS},
    **{op: _reduction for op in op_sets.REDUCTIONS_REFUSED},
    aten.slice.Tensor: _slice,
    aten.tensor_split.indices: _tensor_split,
    aten._assert_tensor_metadata.default: _metadata_assert,
    aten.sum.dim_IntList: _sum_or_mean,
    aten.sum.default: _sum_or_mean,
    aten.mean.dim: _sum_or_mean,
    aten.mean.default: _sum_or_mean,
    aten.cross_entropy_loss.default: _loss,
    aten.nll_loss_nd.default: _loss,
    aten.nll_loss.default: _loss,
    aten.mse_loss.default: _elementwise_loss,
    aten.histc.default: _histc,
    aten.l1_loss.default: _elementwise_loss,
    aten.tril.default: _mask,
    aten.triu.default: _mask,
    aten.arange.default: _arange,
    aten.arange.start: _arange,
    aten.arange.start_step: _arange,
    aten.embedding.default: _index,
    aten.index_select.default: _index,
    aten.gather.default: _index,
    aten.index.Tensor: _index,
}


def rule_for(target, rules=RULES):
    """The rule for an op in `rules`, or None when there is none."""
    if target in rules:
        return rules[target]
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags:
        return rules.get(aten.copy_.default, _safe) if _writes_first(target) else _safe  # x.add_(y): x.copy_(x + y)
    if getattr(target, "__module__", None) == "_operator":
        return _safe  # getitem on tuples, SymInt arithmetic
    return None


def _writes_first(target) -> bool:
    """The op writes into its first argument (add_, mul_, ...)."""
    args = target._schema.arguments
    return bool(args) and args[0].alias_info is not None and args[0].alias_info.is_write
