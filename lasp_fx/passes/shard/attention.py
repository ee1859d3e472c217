"""Sharding rules for attention: linear attention becomes LASP, causal softmax attention gathers K and V."""

from __future__ import annotations

import torch

from lasp_fx.distributed import seq_ops
from lasp_fx.passes.shard.rules import ShardError, _arg, _val

aten = torch.ops.aten
_HINT = "Compute it outside the parallelized model, or keep this model on one device"


def _linear_attention(ctx, node):
    """lasp_fx::linear_attention on a slice -> lasp_fx::sp_linear_attention over the group."""
    q, k, v, log_decay = node.args[:4]
    for name, x in (("q", q), ("k", k), ("v", v)) + ((("log_decay", log_decay),) if _per_token(log_decay) else ()):
        if ctx.seq_dims(x) != (1,):
            raise ShardError(
                node,
                f"linear attention whose {name} carries the sequence in dims {ctx.seq_dims(x)}, not dim 1",
                "This is a bug in the rewrite that produced the op: please report it",
            )
    node.target = torch.ops.lasp_fx.sp_linear_attention.default
    # No all-gather per layer (check=False): the states carry each call's header, checked by their
    # receivers (distributed/header.py), and parallelize checked the whole batch at its first call.
    # Packed documents (runs, ops/documents.py) come last: the graph built them from global
    # positions (the arange rule) and the replicated cu_seqlens (the searchsorted rule).
    runs = _arg(node, 6, "runs")
    node.args = tuple(node.args[:6]) + (ctx.spec.group_name, ctx.spec.method, False, ctx.spec.timeout) + (
        () if runs is None else (runs,)
    )
    node.kwargs = {name: value for name, value in node.kwargs.items() if name != "runs"}


def _searchsorted(ctx, node):
    """searchsorted(table, positions): position by position when the table does not carry the sequence
    (packed documents: the replicated cu_seqlens against each token's global position)."""
    if ctx.seq_dims(node.args[0]):
        raise ShardError(node, "searchsorted in a table that carries the sequence", _HINT)


def _per_token(log_decay) -> bool:
    return log_decay is not None and _val(log_decay).dim() == 3


def _softmax_attention(ctx, node):
    """Causal SDPA over the sequence -> this rank's queries over all ranks' keys up to its own."""
    q, k, v = node.args[:3]
    seq_q, seq_k = ctx.seq_dims(q), ctx.seq_dims(k)
    if not seq_q and not seq_k:
        return
    attn_mask, dropout_p = _arg(node, 3, "attn_mask"), _arg(node, 4, "dropout_p", 0.0)
    is_causal, scale = _arg(node, 5, "is_causal", False), _arg(node, 6, "scale")
    enable_gqa = _arg(node, 7, "enable_gqa", False)
    dim = _val(q).dim() - 2
    if seq_q != (dim,) or seq_k != (dim,) or ctx.seq_dims(v) != (dim,):
        raise ShardError(node, "softmax attention whose sequence is not the second-to-last dimension", _HINT)
    if not is_causal or attn_mask is not None:
        raise ShardError(
            node,
            "softmax attention over the sequence with an explicit mask or without is_causal=True",
            "lasp_fx shards causal attention (is_causal=True, attn_mask=None); for padding, drop the "
            "mask and mark padded labels with ignore_index instead",
        )
    if dropout_p:
        raise ShardError(node, "attention dropout", "Set the attention dropout to 0 for sequence-parallel training")
    node.target = seq_ops.causal_attention_over_ranks
    node.args = (q, k, v, scale, bool(enable_gqa), ctx.spec.rank, ctx.spec.group_name)
    node.kwargs = {}


RULES = {
    torch.ops.lasp_fx.linear_attention.default: _linear_attention,
    aten.searchsorted.Tensor: _searchsorted,
    aten.scaled_dot_product_attention.default: _softmax_attention,
}
