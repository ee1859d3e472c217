"""Ulysses-style baseline: all-to-all from sequence slices to head groups, the single-GPU op on all tokens, back.

Each rank holds tokens [r*T, (r+1)*T) of all H heads. One all-to-all per input turns that into
all P*T tokens of heads [r*H/P, (r+1)*H/P); `lasp_fx.linear_attention` runs there with no
communication; one all-to-all brings the output back. Bytes on the wire per rank and direction:
(P-1)/P of each of q, k, v, o (and their gradients) - they grow with the sequence, which is what
LASP avoids (it moves one d x e state per head). Needs H and H_kv divisible by P.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fc

import lasp_fx


def _all_to_all(x: torch.Tensor, group) -> torch.Tensor:
    """Block j of x's leading dim goes to rank j; block i of the result came from rank i (autograd-aware)."""
    return fc.wait_tensor(fc.all_to_all_single_autograd(x.contiguous(), None, None, group))


def seq_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """[B, T, H, *F] (this rank's tokens, all heads) -> [B, P*T, H/P, *F] (all tokens, this rank's heads)."""
    P = group.size()
    B, T, H, *F = x.shape
    blocks = x.reshape(B, T, P, H // P, *F).movedim(2, 0)  # [P (head group -> dst), B, T, H/P, *F]
    got = _all_to_all(blocks, group)  # [P (src = token slice), B, T, H/P, *F]
    return got.movedim(0, 1).reshape(B, P * T, H // P, *F)


def heads_to_seq(y: torch.Tensor, group) -> torch.Tensor:
    """Inverse of `seq_to_heads`: [B, P*T, H/P, *F] -> [B, T, H, *F]."""
    P = group.size()
    B, PT, Hl, *F = y.shape
    blocks = y.reshape(B, P, PT // P, Hl, *F).movedim(1, 0)  # [P (token slice -> dst), B, T, H/P, *F]
    got = _all_to_all(blocks, group)  # [P (src = head group), B, T, H/P, *F]
    return got.movedim(0, 2).reshape(B, PT // P, P * Hl, *F)


def ulysses_attention(q, k, v, log_decay=None, *, group=None, scale=None):
    """`lasp_fx.linear_attention` over a sequence split across `group`, by head-splitting all-to-alls.

    Same contract as `lasp_fx.linear_attention(..., group=)` without states: q [B, T, H, D], k/v
    [B, T, H_kv, *], log_decay None, [H] (every rank passes all heads) or [B, T, H] (this rank's tokens).
    """
    group = group or dist.group.WORLD
    P, r = group.size(), group.rank()
    H, Hk = q.shape[2], k.shape[2]
    if H % P or Hk % P:
        raise ValueError(f"Ulysses needs heads divisible by the group size: H={H}, H_kv={Hk}, P={P}")
    if log_decay is not None:
        log_decay = log_decay.view(P, H // P)[r] if log_decay.dim() == 1 else seq_to_heads(log_decay, group)
    o = lasp_fx.linear_attention(seq_to_heads(q, group), seq_to_heads(k, group), seq_to_heads(v, group),
                                 log_decay, scale=scale)
    return heads_to_seq(o, group)
