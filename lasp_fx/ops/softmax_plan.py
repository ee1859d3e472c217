"""The tiles that cover causal softmax attention of s queries at the tail of K keys, with document ids.

Queries sit at positions K - s .. K - 1 of the keys (a rank's slice over the keys of every rank up
to its own). Every tile is at most s x s and is one kernel call (`softmax_tile`), merged by its
log-sum-exp, so nothing of size s x K exists:
- without document ids: the earlier keys in blocks of s (fully visible) and the diagonal block
  (causal);
- with document ids (a per-token id, 0 = padding; a query sees the earlier keys of its own id,
  never padding): per batch row, each run of one id among the queries against the runs of that id
  among the keys (cut at every s keys), fully visible or causal, without any mask. Packed
  documents give about one tile per document. A row whose ids break into more than `max_tiles`
  tiles (documents of a few tokens) falls back to masked blocks: each block of s keys with an
  s x s mask, skipped where no query shares a document with it.
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
    fully visible, or `masked`: visibility from the document ids (`tile_mask`)."""

    b0: int
    b1: int
    q0: int
    q1: int
    k0: int
    k1: int
    causal: bool
    masked: bool = False


def plan(batch: int, s: int, K: int, docs_q: Tensor | None, docs_k: Tensor | None,
         max_tiles: int = MAX_TILES) -> list[Tile]:
    """The tiles of s queries (positions K - s ..) over K keys; docs_q [batch, s], docs_k [batch, K]."""
    off = K - s
    if docs_q is None:
        tiles = [Tile(0, batch, 0, s, j, min(j + s, off), False) for j in range(0, off, s)]
        return tiles + [Tile(0, batch, 0, s, off, K, True)]
    rows = [_row_tiles(b, s, off, docs_q[b], docs_k[b]) for b in range(batch)]
    if all(len(t) <= max_tiles for t in rows):
        return [t for row in rows for t in row]
    return _masked_blocks(batch, s, K, docs_q, docs_k)


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


def tile_mask(tile: Tile, docs_q: Tensor, docs_k: Tensor) -> Tensor:
    """[b1 - b0, 1, q1 - q0, k1 - k0] booleans: key j is seen by query i (same document, not padding,
    not after it)."""
    off = docs_k.shape[1] - docs_q.shape[1]
    dq = docs_q[tile.b0:tile.b1, tile.q0:tile.q1]
    dk = docs_k[tile.b0:tile.b1, tile.k0:tile.k1]
    seen = (dq[:, :, None] == dk[:, None, :]) & (dq != 0)[:, :, None]
    if tile.k1 > off + tile.q0:  # keys at or after some query's position: causal cut
        qpos = torch.arange(tile.q0, tile.q1, device=dq.device) + off
        kpos = torch.arange(tile.k0, tile.k1, device=dq.device)
        seen &= kpos[None, :] <= qpos[:, None]
    return seen[:, None]


def _runs(ids: Tensor, cuts: Tensor | None = None) -> list[tuple[int, int, int]]:
    """(id, start, end) of each run of equal ids, also cut before every position where `cuts` is True."""
    change = ids[1:] != ids[:-1]
    if cuts is not None:
        change |= cuts[1:]
    starts = torch.cat([change.new_ones(1), change]).nonzero().flatten()
    values = ids[starts]
    starts, values = starts.tolist(), values.tolist()
    ends = starts[1:] + [ids.numel()]
    return list(zip(values, starts, ends))


def _row_tiles(b: int, s: int, off: int, dq: Tensor, dk: Tensor) -> list[Tile]:
    pos = torch.arange(dk.numel(), device=dk.device)
    key_runs = {}
    # earlier keys cut every s (tiles stay s x s), the queries' own keys only where the queries start
    for i, c, d in _runs(dk, ((pos % s == 0) & (pos < off)) | (pos == off)):
        if i != 0:
            key_runs.setdefault(i, []).append((c, d))
    tiles = []
    for i, a, e in _runs(dq):
        for c, d in key_runs.get(i, []) if i != 0 else []:
            if d <= off + a:  # all before the run's first query
                tiles.append(Tile(b, b + 1, a, e, c, d, False))
            elif (c, d) == (off + a, off + e):  # the run itself (local key runs are the query runs)
                tiles.append(Tile(b, b + 1, a, e, c, d, True))
    return tiles


def _masked_blocks(batch: int, s: int, K: int, docs_q: Tensor, docs_k: Tensor) -> list[Tile]:
    tiles = []
    for j in range(0, K, s):
        tile = Tile(0, batch, 0, s, j, min(j + s, K), False, masked=True)  # the mask holds the causal cut
        if bool(tile_mask(tile, docs_q, docs_k).any()):
            tiles.append(tile)
    return tiles
