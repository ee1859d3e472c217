"""Sequence tiles: a tensor split along the sequence, each piece through position-wise ops, concatenated back.

On a rank the pieces are pieces of its own slice; that changes nothing when every op between
the split and the cat works position by position and the pieces come back in order, so exactly
that graph is allowed, e.g. `torch.cat([mlp(t) for t in x.tensor_split(4, dim=1)], dim=1)`.
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
    pieces = list(node.users)
    if not all(p.target is operator.getitem for p in pieces):
        raise ShardError(node, "splits the sequence and uses the pieces as a list", _HINT)
    pieces.sort(key=lambda p: p.args[1])
    if [p.args[1] for p in pieces] != list(range(len(_val(node)))):  # a dropped piece drops positions
        raise ShardError(node, "splits the sequence and leaves pieces out (or takes one twice)", _HINT)
    cat = _tiles_cat(ctx, node, pieces, dim, rules)
    cat.meta[TILES] = node.name


def _tiles_cat(ctx, split, pieces, dim, rules) -> fx.Node:
    """The cat that reassembles the pieces' position-wise images, in order; raises otherwise."""
    owner: dict[fx.Node, int] = {p: i for i, p in enumerate(pieces)}  # node -> the piece it derives from
    cats, order = set(), {n: i for i, n in enumerate(ctx.graph.nodes)}
    for node in sorted({u for p in pieces for u in _cone(p)}, key=order.__getitem__):
        sources = {owner[a] for a in node.all_input_nodes if a in owner}
        if node.target is aten.cat.default:
            cats.add(node)
            continue
        if len(sources) != 1:
            raise ShardError(node, "mixes two tiles of the sequence", _HINT)
        for a in node.all_input_nodes:
            if a not in owner and ctx.seq_dims(a):
                raise ShardError(node, "combines a tile with a tensor that carries the whole sequence", _HINT)
        (i,) = sources
        size = _val(pieces[i]).shape[dim]
        for val in _val(node) if isinstance(_val(node), (tuple, list)) else [_val(node)]:
            if isinstance(val, torch.Tensor):
                if ctx.seq_dims_of(val) != (dim,) or not _same(val.shape[dim], size):
                    raise ShardError(node, f"moves or resizes the sequence dimension {dim} of a tile", _HINT)
            elif not isinstance(val, (torch.SymInt, int)):
                raise ShardError(node, "turns a tile into something that is not a tensor", _HINT)
        if not _keeps_positions(rule_for(node.target, rules)):
            raise ShardError(node, "mixes positions inside a tile of the sequence", _HINT)
        owner[node] = i
    if len(cats) != 1:
        raise ShardError(split, "splits the sequence without concatenating the tiles back once", _HINT)
    (cat,) = cats
    parts = cat.args[0]
    if (_arg(cat, 1, "dim", 0) % _val(cat).dim() != dim or len(parts) != len(pieces)
            or [owner.get(p) for p in parts] != list(range(len(pieces)))):
        raise ShardError(cat, "does not put the tiles of the sequence back in their order", _HINT)
    for node, i in owner.items():
        if any(u is not cat and u not in owner for u in node.users):
            raise ShardError(node, "a tile of the sequence is used outside its tile", _HINT)
    return cat


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
