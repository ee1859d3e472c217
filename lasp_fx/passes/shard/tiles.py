"""Sequence tiles: tensors split along the sequence, each piece through position-wise ops, concatenated back.

On a rank the pieces are pieces of its own slice; that changes nothing when every op between
the split and the cats works position by position and the pieces come back in order, so exactly
that graph is allowed, e.g. `torch.cat([mlp(t) for t in x.tensor_split(4, dim=1)], dim=1)`. A tile
may take the same tile of other tensors split alike (`f(x_i, u_i)`) and give several outputs, each
concatenated back in order.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from lasp_fx.passes.shard import rules as shard_rules
from lasp_fx.passes.shard.rules import ShardError, _arg, _val, rule_for

aten = torch.ops.aten
TILES = "lasp_fx_tiles"  # node.meta key on a cat that reassembles checked tiles
_SPLITS = (aten.tensor_split.sections, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default)
_HINT = ("Tiles are supported as torch.cat([f(t) for t in x.tensor_split(n, dim)], dim) where f works "
         "position by position (no attention, sum over the sequence or shift inside f)")


_KEEP = (shard_rules._safe, shard_rules._view, shard_rules._contraction, shard_rules._reduction,
         shard_rules._sum_or_mean)


def _keeps_positions(rule) -> bool:
    """Rules that leave an op whose output keeps the tile's positions (checked by the caller) as it
    is, and refuse it when it mixes positions: safe inside a tile. (A sum over the sequence, which
    _sum_or_mean would make global, changes the shape, so it never gets here.)"""
    return (rule in _KEEP or getattr(rule, "__qualname__", "").startswith("_along_dim")
            or getattr(rule, "keeps_positions", False))


def _split(ctx, node, rules):
    x = node.args[0]
    dim = _arg(node, 2, "dim", 0) % _val(x).dim()  # (self, sections / sizes / chunks, dim)
    if dim not in ctx.seq_dims(x):
        return
    pieces = _pieces(node)
    if not all(p.target is operator.getitem for p in node.users):
        raise ShardError(node, "splits the sequence and uses the pieces as a list", _HINT)
    if [p.args[1] for p in pieces] != list(range(len(_val(node)))):  # a dropped piece drops positions
        raise ShardError(node, "splits the sequence and leaves pieces out (or takes one twice)", _HINT)
    for cat in _tiles_cats(ctx, node, pieces, dim, rules):
        cat.meta[TILES] = node.name


def _pieces(split: fx.Node) -> list[fx.Node]:
    return sorted((p for p in split.users if p.target is operator.getitem), key=lambda p: p.args[1])


def _tiles_cats(ctx, split, pieces, dim, rules) -> list[fx.Node]:
    """The cats that reassemble the pieces' position-wise images, each in order; raises otherwise."""
    sizes = [_val(p).shape[dim] for p in pieces]
    owner: dict[fx.Node, int | None] = {p: i for i, p in enumerate(pieces)}  # node -> the tile it belongs to

    def tile_of(node) -> int | None:
        """The tile of a tensor that one in the split's cone takes: a piece of a split alike (the same
        dim and piece sizes), or position by position from such pieces; None for anything else."""
        if node not in owner:
            i = _aligned(node, dim, sizes)
            owner[node] = _check(node) if i is None and _tile_sized(node, dim, sizes) else i
        return owner[node]

    def _check(node) -> int:
        """node's tile: its sequence-carrying inputs all in one tile, itself position by position."""
        sources = set()
        for a in node.all_input_nodes:
            if ctx.seq_dims(a) or a in owner:
                i = tile_of(a)
                if i is None:
                    raise ShardError(node, "combines a tile with a tensor that carries the whole sequence", _HINT)
                sources.add(i)
        if len(sources) != 1:
            raise ShardError(node, "mixes two tiles of the sequence", _HINT)
        (i,) = sources
        for val in _val(node) if isinstance(_val(node), (tuple, list)) else [_val(node)]:
            if isinstance(val, torch.Tensor):
                if ctx.seq_dims_of(val) != (dim,) or not _same(val.shape[dim], sizes[i]):
                    raise ShardError(node, f"moves or resizes the sequence dimension {dim} of a tile", _HINT)
            elif not isinstance(val, (torch.SymInt, int)):
                raise ShardError(node, "turns a tile into something that is not a tensor", _HINT)
        if not _keeps_positions(rule_for(node.target, rules)):
            raise ShardError(node, "mixes positions inside a tile of the sequence", _HINT)
        return i

    cats, order = set(), {n: i for i, n in enumerate(ctx.graph.nodes)}
    for node in sorted({u for p in pieces for u in _cone(p)}, key=order.__getitem__):
        if node.target is aten.cat.default:
            cats.add(node)
        elif owner.get(node) is None:
            owner[node] = _check(node)
    if not cats:
        raise ShardError(split, "splits the sequence without concatenating the tiles back", _HINT)
    for cat in cats:
        parts = cat.args[0]
        if (_arg(cat, 1, "dim", 0) % _val(cat).dim() != dim or len(parts) != len(pieces)
                or [owner.get(p) for p in parts] != list(range(len(pieces)))):
            raise ShardError(cat, "does not put the tiles of the sequence back in their order", _HINT)
    for node, i in owner.items():
        if i is not None and any(u not in cats and owner.get(u) is None for u in node.users):
            raise ShardError(node, "a tile of the sequence is used outside its tile", _HINT)
    return sorted(cats, key=order.__getitem__)


def _aligned(node, dim: int, sizes: list) -> int | None:
    """The tile index of `node` if it is a piece of a split along `dim` into pieces of `sizes`."""
    split = node.args[0] if node.target is operator.getitem and node.args else None
    if not isinstance(split, fx.Node) or split.target not in _SPLITS or not isinstance(_val(split), (tuple, list)):
        return None
    vals = _val(split)
    if _arg(split, 2, "dim", 0) % _val(split.args[0]).dim() != dim or len(vals) != len(sizes):
        return None
    if not all(_same(v.shape[dim], n) for v, n in zip(vals, sizes)):
        return None
    return node.args[1]


def _tile_sized(node, dim: int, sizes: list) -> bool:
    """Whether `node` is a tensor whose `dim` has a tile's length: one that may lie inside a tile."""
    val = _val(node)
    return (isinstance(val, torch.Tensor) and val.dim() > dim
            and any(_same(val.shape[dim], n) for n in sizes))


def _cone(node: fx.Node) -> set[fx.Node]:
    """`node`'s users and theirs, stopping at a cat."""
    seen, stack = set(), list(node.users)
    while stack:
        n = stack.pop()
        if n in seen or n.op == "output":
            continue
        seen.add(n)
        if n.target is not aten.cat.default:
            stack.extend(n.users)
    return seen


def _same(a, b) -> bool:
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt) and a.node.expr == b.node.expr
    return a == b


def rules(all_rules: dict) -> dict:
    """The split and cat rules, given the pass's whole rule table (to classify the ops in a tile)."""
    along_cat = all_rules[aten.cat.default]

    def split(ctx, node):
        _split(ctx, node, all_rules)

    split.keeps_positions = True  # inside a tile: a split of features (a split of the tile is refused)

    def cat(ctx, node):
        if TILES not in node.meta:
            along_cat(ctx, node)

    return {**{op: split for op in _SPLITS}, aten.cat.default: cat}
