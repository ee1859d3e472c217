"""Packed documents on slices: running counts of document starts, the op's runs from labels, masks of documents.

A model over packed rows marks its documents with a [B, T] input: position_ids restarting per
document (HF's DataCollatorWithFlattening), or document ids. Three things follow from it, each made
the whole row's on a slice:
- integer cumsums over the sequence (document numbers, `cumsum(position_ids == 0)`) add the earlier
  ranks' totals, so the numbers are the one-device ones;
- the op's runs from labels (`document_ids=`, `ops.documents.document_runs`) take the label of the
  token before the slice, so a document crossing the rank edge continues and one starting there does not;
- a softmax mask `causal & same document` (HF's masking_utils builds one from position_ids; by hand
  from document numbers) is recognised by replay, as padding masks are: computed from one [B, s]
  integer input, it is replayed with values of every kind (restarts, jumps, labels, repeats) and
  must equal `causal & same run` under one reading of that input (`ops.documents.RULES`) each time.
  The attention then runs over the ranks with that input gathered once per forward and read the
  same way. A mask of another form is left to padding_masks, which refuses it at its line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from lasp_fx.distributed import documents as sp_documents, seq_ops
from lasp_fx.ops import documents
from lasp_fx.passes.shard import padding_masks
from lasp_fx.passes.shard.causal_masks import mask_region, probe_lengths, replay
from lasp_fx.passes.shard.rules import ShardError, _arg, _reduction, _val

aten = torch.ops.aten
_SDPA = aten.scaled_dot_product_attention.default
_RUNS = "lasp_fx_document_runs"  # node.meta key on a document input: {rule: its whole row's runs}


def document_causal_attention(q, k, v, values, rule: str, dropout_p=0.0, scale=None, enable_gqa=False):
    """SDPA with the mask `kv <= q & same document`, the documents read off values [B, T] by `rule`."""
    runs = documents.runs_of(values, rule)
    n = q.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    same = runs[:, None, :, None] == runs[:, None, None, :]
    extra = {"enable_gqa": True} if enable_gqa else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal & same, dropout_p=dropout_p, scale=scale, **extra)


def document_masks_pass(gm: fx.GraphModule, symbols: frozenset) -> fx.GraphModule:
    """Replace SDPA calls whose mask is causal & the documents of one [B, s] integer input."""
    found = {}
    for node in list(gm.graph.find_nodes(op="call_function", target=_SDPA)):
        mask = _arg(node, 3, "attn_mask")
        if not isinstance(mask, fx.Node) or _arg(node, 5, "is_causal", False):
            continue
        if not padding_masks.carries_sequence(node, symbols):
            continue
        if mask not in found:
            found[mask] = _recognise(mask, symbols)
        if found[mask] is None:
            continue
        values, rule = found[mask]
        q, k, v = node.args[:3]
        node.target = document_causal_attention
        node.args = (q, k, v, values, rule, _arg(node, 4, "dropout_p", 0.0), _arg(node, 6, "scale"),
                     _arg(node, 7, "enable_gqa", False))
        node.kwargs = {}
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _recognise(mask: fx.Node, symbols: frozenset):
    """(the input, its rule) when the mask is causal & same document under that rule at every replay, else None."""
    found = mask_region(mask)
    if found is None or len(found[1]) != 1:
        return None
    region, (values,) = found
    val = _val(values)
    if not padding_masks.is_flags(values, symbols) or val.dtype.is_floating_point or val.dtype == torch.bool:
        return None
    lengths = probe_lengths(region)
    if lengths is None:
        return None
    rules = _matching_rules(region, mask, values, symbols, lengths, int(val.shape[0]))
    return (values, rules[0]) if rules else None


def _value_patterns(batch: int, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Rows of every kind a packed input has, where the rules disagree: one document, restarts at 0
    (documents of 1 to 4 tokens), the same with the row starting mid-document, positions that jump,
    labels, random repeats, zeros."""
    gen = torch.Generator().manual_seed(n)
    t = torch.arange(n)

    def restarting(offset: int) -> torch.Tensor:
        lengths = torch.randint(1, 5, (n,), generator=gen).tolist()
        row = torch.cat([torch.arange(length) for length in lengths])[:n]
        return torch.where(t < lengths[0], row + offset, row)

    rows = [t.expand(batch, n), torch.stack([restarting(0) for _ in range(batch)]),
            torch.stack([restarting(3) for _ in range(batch)]), (t + 5 * (t >= n // 2)).expand(batch, n),
            (t // 2).expand(batch, n), torch.randint(0, 3, (batch, n), generator=gen), torch.zeros(batch, n)]
    return [r.to(dtype).contiguous() for r in rows]


def _matching_rules(region, mask, values, symbols, lengths, batch: int) -> list[str]:
    """The rules under which the replayed mask is `causal & same run` for every pattern at every length."""
    rules = list(documents.RULES)
    for n in lengths:
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        for pattern in _value_patterns(batch, n, _val(values).dtype):
            m = replay(region, mask, symbols, n, {values: pattern})
            if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[-2:] != (n, n) or m.shape[0] not in (1, batch):
                return []
            allowed = m if m.dtype == torch.bool else m == 0  # additive float masks: 0 keeps, -inf drops
            allowed = allowed.expand(batch, *allowed.shape[1:])
            for rule in list(rules):
                runs = documents.runs_of(pattern, rule)
                if not torch.equal(allowed, (causal & (runs[:, :, None] == runs[:, None, :]))[:, None].expand_as(allowed)):
                    rules.remove(rule)
            if not rules:
                return []
    return rules


# ------------------------------------------------------------------------------ the shard rules
def _document_attention(ctx, node):
    """document_causal_attention on a slice -> causal attention over the ranks, the whole row's runs."""
    q, k, v, values, rule, dropout_p, scale, enable_gqa = node.args
    padding_masks.check_sharded_attention(ctx, node, (q, k, v), values, dropout_p)
    node.target = seq_ops.causal_attention_over_ranks
    node.args = (q, k, v, scale, bool(enable_gqa), ctx.spec.rank, ctx.spec.group_name, None, _whole_runs(ctx, values, rule))


def _whole_runs(ctx, values: fx.Node, rule: str) -> fx.Node:
    """The run index [B, P*s] of every rank's tokens, once per forward for all the layers that read it."""
    cache = values.meta.setdefault(_RUNS, {})
    if rule not in cache:
        gathered = padding_masks.gathered(ctx, values)
        with ctx.graph.inserting_after(gathered):
            runs = ctx.graph.call_function(documents.runs_of, (gathered, rule))
        runs.meta["val"] = _val(gathered).new_empty(_val(gathered).shape, dtype=torch.int64)
        cache[rule] = runs
    return cache[rule]


def _document_runs(ctx, node):
    """The op's runs from a slice's labels -> with the label of the token before the slice."""
    (ids,) = node.args
    if ctx.seq_dims(ids) != (1,):
        raise ShardError(node, f"document_ids that carry the sequence in dims {ctx.seq_dims(ids)}, not dim 1",
                         "Pass document_ids [B, T] with the sequence in dim 1, as the op's q")
    ctx.replace(node, ctx.call(node, sp_documents.document_runs_over_ranks, ids, ctx.spec.rank, ctx.spec.group_name))


def _cumsum(ctx, node):
    """An integer cumsum over the sequence (document numbers) -> plus the earlier ranks' totals.

    Floats stay refused: their sum in another order is another rounding, and they need a backward."""
    x, dim = node.args[0], node.args[1] % _val(node.args[0]).dim()
    if dim not in ctx.seq_dims(x):
        return
    if _val(node).dtype.is_floating_point or _val(node).dtype.is_complex:
        _reduction(ctx, node)
        return
    ctx.wrap(node, sp_documents.cumsum_over_ranks, x, dim, ctx.spec.rank, ctx.spec.group_name)


RULES = {
    document_causal_attention: _document_attention,
    torch.ops.lasp_fx.document_runs.default: _document_runs,
    aten.cumsum.default: _cumsum,
}
