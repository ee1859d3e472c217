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
                                docs: Tensor | None = None, max_tiles: int = MAX_TILES,
                                balance: bool = True) -> Tensor:
    """This rank's slice of causal SDPA over the whole sequence: q, k, v [..., H, s, D] slices.

    Query i of rank r sits at global position r*s + i and sees keys 0 .. r*s + i. `docs`: this
    rank's per-token document ids [B, s] (0 = padding): a query then sees only the earlier keys
    of its own document, and a padding query gets 0. `max_tiles`: see `ops.softmax_plan`.
    `balance`: swap query halves with rank P - 1 - r (see the module docstring).
    """
    lead = q.shape[:-3]  # [H, s, D] or [B, ..., H, s, D]: one batch dim for the tiles
    q, k, v = (x.reshape(-1, *x.shape[-3:]) for x in (q, k, v))
    if q.shape[1] != k.shape[1] and not enable_gqa and k.shape[1] != 1:
        raise ValueError(f"softmax attention of {q.shape[1]} query heads over {k.shape[1]} key heads without "
                         "enable_gqa=True: pass enable_gqa=True to share the key/value heads")
    world, s = resolve_group(group_name).size(), q.shape[2]
    keys = _all_gather_autograd(k.contiguous(), 2, group_name)
    values = _all_gather_autograd(v.contiguous(), 2, group_name)
    all_docs = None if docs is None else funcol.all_gather_tensor(docs.contiguous(), 1, group_name)

    def attend(queries, ids, end):  # queries at global positions end - len .. end - 1
        cut = None if all_docs is None else all_docs.narrow(1, 0, end)
        return tail_softmax_attention(queries, keys.narrow(2, 0, end), values.narrow(2, 0, end), scale, ids, cut,
                                      max_tiles)

    if not balance or world == 1 or s < 2:
        out = attend(q, docs, (rank + 1) * s)
    else:
        h, partner = s // 2, world - 1 - rank
        theirs = _swap(q[:, :, h:], partner, world, group_name)
        their_docs = None if docs is None else _swap(docs[:, h:], partner, world, group_name)
        mine = attend(q[:, :, :h], None if docs is None else docs[:, :h], rank * s + h)
        back = _swap(attend(theirs, their_docs, (partner + 1) * s), partner, world, group_name)
        out = torch.cat([mine, back], dim=2)
    return out.reshape(*lead, *out.shape[1:])


def _swap(x: Tensor, partner: int, world: int, group_name: str) -> Tensor:
    """x sent to `partner`, and the partner's x received (a pair of ranks, or a rank with itself),
    in one all-to-all of the group; differentiable for floating x (the gradient goes back)."""
    splits = [x.shape[0] if j == partner else 0 for j in range(world)]
    if x.is_floating_point():
        return funcol.wait_tensor(funcol.all_to_all_single_autograd(x.contiguous(), splits, splits, group_name))
    return funcol.wait_tensor(funcol.all_to_all_single(x.contiguous(), splits, splits, group_name))
