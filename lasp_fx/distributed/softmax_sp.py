"""Causal softmax attention over sequence-parallel ranks (the softmax layers of hybrids), memory-linear.

Each rank all-gathers K and V once per layer (LASP-2H style; O(T d) memory, one collective, and
the rank needs every earlier block anyway) and runs `ops.softmax_tail`: tiles of at most s x s
through the flash / SDPA kernels, merged by log-sum-exp, so no s x T scores or mask exist.

Causal imbalance: rank r's queries see r + 1/2 blocks of keys, so without balancing the last rank
does 2P - 1 times the first rank's work and sets the pace. With `balance` (the default) each
rank keeps the first half of its queries and swaps the second half with rank P - 1 - r (one
all-to-all of s/2 queries there, one of their outputs back, the same for their gradients):
every rank then does the same work, P/2 blocks' worth, instead of P - 1/2 on the last rank.
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from lasp_fx.distributed.group import resolve_group
from lasp_fx.ops.softmax_plan import MAX_TILES
from lasp_fx.ops.softmax_tail import tail_softmax_attention

# renamed in torch 2.13; 2.11 has only the old name
_all_gather_autograd = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def causal_attention_over_ranks(q, k, v, scale, enable_gqa: bool, rank: int, group_name: str,
                                key_keep: Tensor | None = None, docs: Tensor | None = None,
                                max_tiles: int = MAX_TILES, balance: bool = True) -> Tensor:
    """This rank's slice of causal SDPA over the whole sequence: q, k, v [..., H, s, D] slices.

    Query i of rank r sits at global position r*s + i and sees keys 0 .. r*s + i, except:
    key_keep: [B, T] booleans of every rank's keys (or [B, s], this rank's: gathered here): False
        keys (padding) are seen by nobody; a padded query still sees the earlier real keys, as in
        HF's padding mask.
    docs: [B, T] document ids of every rank's tokens (or [B, s], this rank's), in the convention of
        `ops.documents`: each maximal run of equal ids is one document (padding, id 0, a run of its
        own), and a query sees only the earlier keys of its own run.
    A query that sees no key gets 0. `max_tiles`: see `ops.softmax_plan`. `balance`: swap query
    halves with rank P - 1 - r (see the module docstring).
    """
    lead = q.shape[:-3]  # [H, s, D] or [B, ..., H, s, D]: one batch dim for the tiles
    q, k, v = (x.reshape(-1, *x.shape[-3:]) for x in (q, k, v))
    if q.shape[1] != k.shape[1] and not enable_gqa and k.shape[1] != 1:
        raise ValueError(f"softmax attention of {q.shape[1]} query heads over {k.shape[1]} key heads without "
                         "enable_gqa=True: pass enable_gqa=True to share the key/value heads")
    world, s = resolve_group(group_name).size(), q.shape[2]
    # waited at once: plain tensors, so that an eager call takes the op's autograd.Function twin
    keys = funcol.wait_tensor(_all_gather_autograd(k.contiguous(), 2, group_name))
    values = funcol.wait_tensor(_all_gather_autograd(v.contiguous(), 2, group_name))
    keep = None if key_keep is None else _whole(key_keep, s, world, group_name) != 0  # HF's 0 / 1 as flags
    runs = None if docs is None else _run_index(_whole(docs, s, world, group_name))

    def attend(queries, start, end):  # queries at global positions start .. end - 1
        return tail_softmax_attention(queries, keys.narrow(2, 0, end), values.narrow(2, 0, end), scale,
                                      None if runs is None else runs[:, :end], None if keep is None else keep[:, :end],
                                      max_tiles)

    if not balance or world == 1 or s < 2:
        out = attend(q, rank * s, (rank + 1) * s)
    else:
        h, partner = s // 2, world - 1 - rank
        mine = attend(q[:, :, :h], rank * s, rank * s + h)
        theirs = attend(_swap(q[:, :, h:], partner, world, group_name), partner * s + h, (partner + 1) * s)
        out = torch.cat([mine, _swap(theirs, partner, world, group_name)], dim=2)
    return out.reshape(*lead, *out.shape[1:])


def _whole(x: Tensor, s: int, world: int, group_name: str) -> Tensor:
    """Per-token values [B, T] of every rank: x itself, or all ranks' [B, s] gathered."""
    if x.shape[-1] == s * world:
        return x
    if x.shape[-1] != s:
        raise ValueError(f"per-token values of shape {tuple(x.shape)}: expected [B, {s}] (this rank's tokens) "
                         f"or [B, {s * world}] (every rank's)")
    return funcol.wait_tensor(funcol.all_gather_tensor(x.contiguous(), 1, group_name))


def _run_index(ids: Tensor) -> Tensor:
    """Each maximal run of equal ids numbered apart (1, 2, ...): `ops.documents`' documents as ids."""
    change = ids[:, 1:] != ids[:, :-1]
    return torch.cat([torch.ones_like(change[:, :1]), change], 1).long().cumsum(1)


def _swap(x: Tensor, partner: int, world: int, group_name: str) -> Tensor:
    """x sent to `partner` and the partner's x received (a pair of ranks, or the middle rank with
    itself), in one all-to-all of the group; the gradient goes back the same way."""
    splits = [x.shape[0] if j == partner else 0 for j in range(world)]
    return funcol.wait_tensor(funcol.all_to_all_single_autograd(x.contiguous(), splits, splits, group_name))
