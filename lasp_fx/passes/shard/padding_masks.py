"""padding_masks_pass(gm, symbols) -> gm: an attention mask that is causal AND the keys' padding becomes one op.

HF transformers under torch.compile (masking_utils.sdpa_mask), and hand-written models, build the
mask of a padded batch from the [B, T] attention_mask: `kv <= q & attention_mask[b, kv]`, by
aranges, comparisons, an index of the flags at the key positions, `&`. On a slice those ops see
only the local block; the whole model needs the causal mask over global positions AND the flags
of every earlier rank's keys. Such a mask depends on the sequence length and on one [B, s] tensor,
its flags; it is replayed at a few lengths (past every integer its ops take, as in causal_masks)
with flags of every kind (none padded, right- and left-padded, random, values other than 0 and 1)
and, when it equals `causal & (flags != 0)[b, kv]` each time, the attention becomes
`padded_causal_attention(q, k, v, keep, ...)`: one device computes it as SDPA did, and the shard
rule (`RULES`) runs it over the ranks with the keys' flags gathered once per forward. A padded
query still sees the earlier real keys, as in the mask it replaces; a mask of another form is
refused at the attention, naming the line that built it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx

from lasp_fx.distributed import seq_ops
from lasp_fx.passes.shard.causal_masks import probe_lengths, replay
from lasp_fx.passes.shard.seq_dims import seq_dims_of
from lasp_fx.passes.shard.rules import ShardError, _arg, _val, source_line

aten = torch.ops.aten
_SDPA = aten.scaled_dot_product_attention.default


def padded_causal_attention(q, k, v, keep, dropout_p=0.0, scale=None, enable_gqa=False):
    """SDPA with the mask `kv <= q & keep[b, kv]` (keep: [B, T] booleans, False at padded keys)."""
    n = q.shape[-2]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    extra = {"enable_gqa": True} if enable_gqa else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal & keep[:, None, None, :], dropout_p=dropout_p,
                                          scale=scale, **extra)


def padding_masks_pass(gm: fx.GraphModule, symbols: frozenset) -> fx.GraphModule:
    """Replace SDPA calls whose mask is causal & the keys' flags by `padded_causal_attention`.

    Raises:
        ShardError: a sequence-carrying attention's mask reads a [B, s] input and is not of that form.
    """
    keeps = {}
    for node in list(gm.graph.find_nodes(op="call_function", target=_SDPA)):
        mask = _arg(node, 3, "attn_mask")
        if not isinstance(mask, fx.Node) or _arg(node, 5, "is_causal", False) or not carries_sequence(node, symbols):
            continue
        found = _flags_region(mask, symbols)
        if found is None:
            continue  # no [B, s] input reaches it: causal_masks_pass, or the attention's rule, decides
        region, flags = found
        lengths = probe_lengths(region)  # past every window or offset the mask's ops take
        if len(flags) != 1 or lengths is None or not all(_is_padded_causal(region, mask, flags[0], symbols, n)
                                                         for n in lengths):
            raise ShardError(
                node,
                f"softmax attention whose mask (built at {source_line(mask)}) reads [B, T] flags (made at "
                f"{'; '.join(source_line(f) for f in flags)}) but is not the causal mask AND the flags of the keys",
                "lasp_fx shards causal attention with a boolean padding mask of the keys (the attention_mask a "
                "tokenizer returns: 1 = token, 0 = padding), or with causal & same document read from one [B, T] "
                "integer input (position_ids restarting at 0 or stepping by 1 per document, as HF's masking_utils "
                "reads them, or runs of document ids); sliding windows, masked queries, additive float padding "
                "masks, bidirectional masks or masks of several inputs are not supported under sequence "
                "parallelism yet: keep this model on one device",
            )
        flags = flags[0]
        if flags not in keeps:
            keeps[flags] = _keep_of(gm.graph, flags)
        q, k, v = node.args[:3]
        node.target = padded_causal_attention
        node.args = (q, k, v, keeps[flags], _arg(node, 4, "dropout_p", 0.0), _arg(node, 6, "scale"),
                     _arg(node, 7, "enable_gqa", False))
        node.kwargs = {}
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def carries_sequence(node: fx.Node, symbols: frozenset) -> bool:
    return any(seq_dims_of(_val(x), symbols) for x in node.args[:3])


def is_flags(node: fx.Node, symbols: frozenset) -> bool:
    """A [B, s] tensor: static batch, the local sequence length exactly."""
    v = _val(node)
    if not isinstance(v, torch.Tensor) or v.dim() != 2 or isinstance(v.shape[0], torch.SymInt):
        return False
    return isinstance(v.shape[1], torch.SymInt) and v.shape[1].node.expr in symbols


def _reads_input(node: fx.Node) -> bool:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op in ("placeholder", "get_attr"):
            if isinstance(_val(n), torch.Tensor):
                return True
            continue
        if n.target is not aten.sym_size.int:
            stack.extend(n.all_input_nodes)
    return False


def _flags_region(mask: fx.Node, symbols: frozenset):
    """(the nodes computing `mask` from its flags, in graph order; the flags nodes), or None.

    Walking up from the mask, the first [B, s] tensors that read an input are its flags. None
    when there are none, or when another tensor input reaches the mask (sizes may).
    """
    seen, flags, stack = {}, set(), [mask]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen[n] = True
        if n is not mask and is_flags(n, symbols) and _reads_input(n):
            flags.add(n)
            continue
        if n.op == "placeholder":
            if isinstance(_val(n), torch.Tensor):
                return None
            continue
        if n.op != "call_function":
            return None
        if n.target is not aten.sym_size.int:
            stack.extend(n.all_input_nodes)
    if not flags:
        return None
    order = {n: i for i, n in enumerate(mask.graph.nodes)}
    return sorted(seen, key=order.__getitem__), sorted(flags, key=order.__getitem__)


def _flag_patterns(batch: int, n: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Flags of every kind a batch has: none padded, right- and left-padded, a whole row padded,
    random; non-boolean flags also take values other than 0 and 1 (a 2 must count as a token)."""
    gen = torch.Generator().manual_seed(n)
    rows = torch.arange(batch)[:, None]
    pos = torch.arange(n)[None, :]
    bools = [torch.ones(batch, n, dtype=torch.bool), pos < n - 1 - rows % n, pos > rows % n,
             (rows > 0).expand(batch, n), torch.rand(batch, n, generator=gen) < 0.5]
    if dtype == torch.bool:
        return bools
    values = torch.tensor([1, 2, 3, -1] if not dtype.is_floating_point else [1.0, 0.5, 2.0, -1.0], dtype=dtype)
    pick = torch.randint(0, len(values), (batch, n), generator=gen)
    return [b.to(dtype) for b in bools] + [torch.where(b, values[pick], 0) for b in bools[1:]]


def _is_padded_causal(region, mask, flags, symbols, length: int) -> bool:
    """At this length, for every flag pattern: mask == causal & (flags != 0)[b, kv], booleans."""
    batch = int(_val(flags).shape[0])
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for pattern in _flag_patterns(batch, length, _val(flags).dtype):
        m = replay(region, mask, symbols, length, {flags: pattern})
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or m.dim() != 4:
            return False
        if m.shape[0] != batch or m.shape[-2:] != (length, length):
            return False
        want = causal[None, None] & (pattern != 0)[:, None, None, :]
        if not torch.equal(m, want.expand(m.shape)):
            return False
    return True


def _keep_of(graph: fx.Graph, flags: fx.Node) -> fx.Node:
    """flags != 0 as booleans (the flags themselves when boolean), right after them."""
    if _val(flags).dtype == torch.bool:
        return flags
    with graph.inserting_after(flags):
        keep = graph.call_function(aten.ne.Scalar, (flags, 0))
    keep.meta["val"] = _val(flags) != 0
    for key in ("stack_trace", "nn_module_stack"):
        if key in flags.meta:
            keep.meta[key] = flags.meta[key]
    return keep


# ------------------------------------------------------------------------------ the shard rule
def _padded_attention(ctx, node):
    """padded_causal_attention on a slice -> causal attention over the ranks, keys' flags gathered."""
    q, k, v, keep, dropout_p, scale, enable_gqa = node.args
    check_sharded_attention(ctx, node, (q, k, v), keep, dropout_p)
    node.target = seq_ops.causal_attention_over_ranks
    node.args = (q, k, v, scale, bool(enable_gqa), ctx.spec.rank, ctx.spec.group_name, gathered(ctx, keep))


def check_sharded_attention(ctx, node: fx.Node, qkv, flags: fx.Node, dropout_p) -> None:
    """Refuse what attention over the ranks cannot take: the sequence elsewhere than q/k/v's dim -2 and
    the [B, s] input's dim 1, or dropout."""
    dim = _val(qkv[0]).dim() - 2
    if any(ctx.seq_dims(x) != (dim,) for x in qkv) or ctx.seq_dims(flags) != (1,):
        raise ShardError(node, "softmax attention whose sequence is not the second-to-last dimension",
                         "Compute it outside the parallelized model, or keep this model on one device")
    if dropout_p:
        raise ShardError(node, "attention dropout", "Set the attention dropout to 0 for sequence-parallel training")


def gathered(ctx, keep: fx.Node) -> fx.Node:
    """Every rank's flags [B, P*s], gathered once per forward for all the layers that read them."""
    gathered = keep.meta.get("lasp_fx_gathered")
    if gathered is None:
        with ctx.graph.inserting_after(keep):
            gathered = ctx.graph.call_function(seq_ops.gather_sequence, (keep, 1, ctx.spec.group_name))
        v = _val(keep)
        gathered.meta["val"] = v.new_empty(v.shape[0], v.shape[1] * ctx.spec.world_size)
        keep.meta["lasp_fx_gathered"] = gathered
    return gathered


RULES = {padded_causal_attention: _padded_attention}
