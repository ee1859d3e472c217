"""causal_masks_pass(gm, symbols) -> gm: an explicit attention mask that is the causal mask becomes is_causal=True.

Libraries build causal masks themselves (HF transformers does under torch.compile: aranges,
comparisons, a packed-sequence check with a cumsum over positions) and pass them to
scaled_dot_product_attention. On a slice such a mask is only the local block, and its
construction mixes positions. When the mask depends on nothing but the sequence length - no
input, parameter or buffer reaches it - it is a function of the length alone; it is replayed at
a few lengths and, if it equals the lower-triangular mask at each, the attention is marked
causal and the mask's graph dies with it. The lengths include one past every integer the mask's
ops take (`probe_lengths`): a sliding window of 4096 tokens is the causal mask on any shorter
probe, and a slice is shorter than the whole sequence.
"""

from __future__ import annotations

import torch
from torch import fx

from lasp_fx.passes.graph import _hint, probe_sizes
from lasp_fx.passes.shard.rules import ShardError, source_line

aten = torch.ops.aten
_SDPA = aten.scaled_dot_product_attention.default
_LENGTHS = (3, 8, 13)  # odd and even, 1 < L: enough to tell tril from small windows, bands and shifts
_MAX_PROBE = 4100  # windows up to 4096 (Mistral, Gemma): replays hold [B, 4098, 4098] masks; larger: unrecognised


def probe_lengths(region: list[fx.Node]) -> tuple[int, ...] | None:
    """Lengths to replay a mask at: `_LENGTHS`, and just past the largest integer its ops take (a
    window, a chunk size, an offset), which can change the mask only at longer lengths; None when
    that length is beyond `_MAX_PROBE`. Sentinels (slice ends of 2**63 - 1) do not count."""
    consts = [abs(a) for n in region if n.op == "call_function" for a in _ints(n) if abs(a) < 2**31]
    top = max(consts, default=0)
    if top + 2 <= max(_LENGTHS):
        return _LENGTHS
    if top + 2 > _MAX_PROBE:
        return None
    return (*_LENGTHS, top + 1, top + 2)


def _ints(node: fx.Node) -> list[int]:
    flat = []
    fx.node.map_aggregate((node.args, node.kwargs), lambda x: flat.append(x) if type(x) is int else None)
    return flat


def causal_masks_pass(gm: fx.GraphModule, symbols: frozenset) -> fx.GraphModule:
    """Replace provably-causal, length-only masks of SDPA calls by is_causal=True."""
    for node in list(gm.graph.find_nodes(op="call_function", target=_SDPA)):
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        if not isinstance(mask, fx.Node) or (len(node.args) > 5 and node.args[5]) or node.kwargs.get("is_causal"):
            continue
        found = mask_region(mask)
        if found is None or found[1]:  # a mask that reads a tensor's values is padding_masks' or documents'
            continue
        region = found[0]
        lengths = probe_lengths(region)
        if lengths is None:
            continue
        causal = {n: _is_causal(region, mask, symbols, n) for n in sorted(lengths)}
        if not all(causal.values()):
            if causal[min(lengths)]:
                raise ShardError(
                    node,
                    f"softmax attention whose mask (built at {source_line(mask)}) is causal on short sequences "
                    f"but not at {min(n for n, ok in causal.items() if not ok)} tokens: a sliding window or "
                    "chunked attention",
                    "lasp_fx shards full causal attention only (on a slice a window wider than the slice would "
                    "vanish): keep this model on one device, or use full attention",
                )
            continue
        args = list(node.args) + [None] * (6 - len(node.args))
        args[3], args[5] = None, True
        kwargs = {k: v for k, v in node.kwargs.items() if k not in ("attn_mask", "is_causal")}
        node.args, node.kwargs = tuple(args), kwargs
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def mask_region(mask: fx.Node) -> tuple[list[fx.Node], set[fx.Node]] | None:
    """(the nodes computing `mask` in graph order, the tensor inputs whose values they read), or None
    if a module or method call is among them.

    Reading a tensor's size (sym_size) does not count: only its values would.
    """
    seen, inputs, stack = {}, set(), [mask]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen[n] = True
        if n.op == "placeholder":
            if isinstance(n.meta.get("val"), torch.Tensor):
                inputs.add(n)
            continue
        if n.op != "call_function":
            return None
        if n.target is not aten.sym_size.int:
            stack.extend(n.all_input_nodes)
    order = {n: i for i, n in enumerate(mask.graph.nodes)}
    return sorted(seen, key=order.__getitem__), inputs


def replay(region: list[fx.Node], mask: fx.Node, symbols: frozenset, length: int, env: dict | None = None):
    """The mask's value with every sequence symbol at `length` (`env`: values given), or None if it cannot run."""
    env = dict(env or {})
    with probe_sizes({s: length for s in symbols}), torch.no_grad():
        try:
            for n in region:
                if n in env:
                    continue
                if n.op == "placeholder" or n.target is aten.sym_size.int:
                    env[n] = _hint(n.meta.get("val"))  # a size, at the probe length
                    continue
                args = fx.node.map_arg(n.args, env.__getitem__)
                kwargs = fx.node.map_arg(n.kwargs, env.__getitem__)
                env[n] = n.target(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a mask we cannot replay is not recognised (and refused later)
            return None
    return env[mask]


def _is_causal(region: list[fx.Node], mask: fx.Node, symbols: frozenset, length: int) -> bool:
    m = replay(region, mask, symbols, length)
    if not isinstance(m, torch.Tensor) or m.shape[-2:] != (length, length):
        return False
    allowed = m if m.dtype == torch.bool else m == 0  # additive float masks: 0 keeps, -inf drops
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return bool((allowed == causal).all())
