"""The tiles that cover causal softmax attention of s queries at the tail of K keys, with documents and padding.

Queries sit at positions K - s .. K - 1 of the keys (a rank's slice over the keys of every rank up
to its own). Query i at position p sees key j iff j <= p, docs[j] == docs[p] (when document ids are
given) and keep[j] (when key flags are given: False at padding). Every tile is at most s x s and
is one kernel call (`softmax_tile`), merged by its log-sum-exp, so nothing of size s x K exists:
- without ids or flags: the earlier keys in blocks of s (fully visible), the diagonal block (causal);
- with them, per batch row: the keys cut into pieces of one id, all kept, within one block of s
  (and cut where the queries start); an earlier piece is fully visible to the queries of its id,
  a piece among the queries' own positions is causal for its own positions and fully visible to
  the later queries of its id. No mask: packed documents give about one tile per document.
- A row that breaks into more than `max_tiles` tiles (documents of a few tokens, scattered
  padding) falls back to masked blocks: each block of s keys with an s x s mask, skipped where no
  query sees any of its keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Beyond this many tiles in a row, r + 1 masked blocks cost less host time than one launch per tile.
MAX_TILES = 64


@dataclass(frozen=True)
class Tile:
    """Rows b0:b1 of the batch, queries q0:q1 (local), keys k0:k1; causal (the same positions) or
    fully visible, or `masked`: visibility from the ids and flags (`tile_mask`)."""

    b0: int
    b1: int
    q0: int
    q1: int
    k0: int
    k1: int
    causal: bool
    masked: bool = False


def plan(batch: int, s: int, K: int, docs: Tensor | None = None, keep: Tensor | None = None,
         max_tiles: int = MAX_TILES) -> list[Tile]:
    """The tiles of s queries (positions K - s ..) over K keys; docs, keep: [batch, K] or None."""
    off = K - s
    if keep is not None and bool(keep.all()):
        keep = None  # no padding (an all-ones attention_mask) costs what no mask costs: no tiles per row
    if docs is None and keep is None:
        tiles = [Tile(0, batch, 0, s, j, min(j + s, off), False) for j in range(0, off, s)]
        return tiles + [Tile(0, batch, 0, s, off, K, True)]
    rows = [_row_tiles(b, s, off, None if docs is None else docs[b], None if keep is None else keep[b], K)
            for b in range(batch)]
    if all(len(t) <= max_tiles for t in rows):
        return [t for row in rows for t in row]
    return _masked_blocks(batch, s, K, docs, keep)


def keys_shared(tiles: list[Tile]) -> bool:
    """Whether two tiles touch the same key of the same row (then key gradients must be summed in
    float32; otherwise each key's gradient comes from one tile and is written once)."""
    rows = {}
    for t in tiles:
        for b in range(t.b0, t.b1):
            rows.setdefault(b, []).append((t.k0, t.k1))
    for spans in rows.values():
        spans.sort()
        if any(nxt[0] < prev[1] for prev, nxt in zip(spans, spans[1:])):
            return True
    return False


def tile_mask(tile: Tile, docs: Tensor | None, keep: Tensor | None, K: int, s: int) -> Tensor:
    """[b1 - b0, 1, q1 - q0, k1 - k0] booleans: key j is seen by query i."""
    off = K - s
    rows, ks = slice(tile.b0, tile.b1), slice(tile.k0, tile.k1)
    qpos = torch.arange(tile.q0, tile.q1) + off
    kpos = torch.arange(tile.k0, tile.k1)
    device = (docs if docs is not None else keep).device
    seen = (kpos[None, :] <= qpos[:, None]).to(device)[None]
    if docs is not None:
        seen = seen & (docs[rows, off + tile.q0:off + tile.q1, None] == docs[rows, None, ks])
    if keep is not None:
        seen = seen & keep[rows, None, ks].bool()
    return seen[:, None]


def _runs(values: Tensor, cuts: Tensor) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values, also cut before every position where `cuts` is True."""
    change = cuts[1:] | (values[1:] != values[:-1])
    starts = torch.cat([change.new_ones(1), change]).nonzero().flatten()
    firsts = values[starts]
    starts, firsts = starts.tolist(), firsts.tolist()
    return list(zip(firsts, starts, starts[1:] + [values.numel()]))


def _row_tiles(b: int, s: int, off: int, docs: Tensor | None, keep: Tensor | None, K: int) -> list[Tile]:
    device = (docs if docs is not None else keep).device
    pos = torch.arange(K, device=device)
    ids = docs if docs is not None else torch.zeros(K, dtype=torch.long, device=device)
    flags = keep.bool() if keep is not None else torch.ones(K, dtype=torch.bool, device=device)
    # a piece's value: its id where kept, a key nobody sees where dropped (-1 - id stays apart from every id)
    values = torch.where(flags, ids.long() * 2, ids.long() * 2 + 1)
    query_runs = {}
    for i, a, e in _runs(ids[off:], torch.zeros(K - off, dtype=torch.bool, device=device)):
        query_runs.setdefault(i, []).append((a, e))
    tiles = []
    # earlier keys cut every s (tiles stay s x s), the queries' own keys where the queries start
    for value, c, d in _runs(values, ((pos % s == 0) & (pos < off)) | (pos == off)):
        if value % 2:
            continue  # dropped keys
        for a, e in query_runs.get(value // 2, []):
            if d <= off + a:  # before every query of the run
                tiles.append(Tile(b, b + 1, a, e, c, d, False))
            elif c < off + e:  # among the run's own positions: causal there, fully visible after
                tiles.append(Tile(b, b + 1, c - off, d - off, c, d, True))
                if d < off + e:
                    tiles.append(Tile(b, b + 1, d - off, e, c, d, False))
    return tiles


def _masked_blocks(batch: int, s: int, K: int, docs: Tensor | None, keep: Tensor | None) -> list[Tile]:
    tiles = []
    for j in range(0, K, s):
        tile = Tile(0, batch, 0, s, j, min(j + s, K), False, masked=True)  # the mask holds the causal cut
        if bool(tile_mask(tile, docs, keep, K, s).any()):
            tiles.append(tile)
    return tiles
