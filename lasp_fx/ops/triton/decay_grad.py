"""The decay's gradient from the dq / dk kernels' partial sums: dG per token, then its reverse cumsum along T.

`assemble` sums the per-D-tile partials q . dq and k . dk into dG in one launch;
`log_decay_grad` takes its reverse cumsum in three (block sums, their suffix sums, each block's
scan), where PyTorch needs about ten launches and a cumsum along T that CUDA runs serially per
row (pytorch#122170).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops import chunked
from lasp_fx.ops.triton.launch import launch

BT = 256  # tokens per program: a [BT, H] tile of dG


@triton.jit
def _assemble_kernel(dGq, dGk, tail, dG, T, H, NK, HAS_TAIL: tl.constexpr, BT: tl.constexpr, BH: tl.constexpr):
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    t = i_t * BT + tl.arange(0, BT)
    h = tl.arange(0, BH)
    mask = (t[:, None] < T) & (h[None, :] < H)
    at = (i_b.to(tl.int64) * T + t[:, None]) * H + h[None, :]
    x = tl.zeros([BT, BH], dtype=tl.float32)
    for k in range(0, NK):
        x += tl.load(dGq + at * NK + k, mask=mask, other=0.0) - tl.load(dGk + at * NK + k, mask=mask, other=0.0)
    if HAS_TAIL:  # the final state's share, at the last token
        x += tl.where(t[:, None] == T - 1, tl.load(tail + i_b * H + h, mask=h < H, other=0.0)[None, :], 0.0)
    tl.store(dG + at, x, mask=mask)


@triton.jit
def _block_sums_kernel(dG, sums, T, H, NBLK, BT: tl.constexpr, BH: tl.constexpr):
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    t = i_t * BT + tl.arange(0, BT)
    h = tl.arange(0, BH)
    x = tl.load(dG + (i_b.to(tl.int64) * T + t[:, None]) * H + h[None, :], mask=(t[:, None] < T) & (h[None, :] < H),
                other=0.0)
    tl.store(sums + (i_b * NBLK + i_t) * BH + h, tl.sum(x, 0))


@triton.jit
def _suffix_kernel(sums, after, NBLK, BH: tl.constexpr, CB: tl.constexpr):
    """after[b, i] = sum of the block sums of blocks > i: CB blocks a step, from the last."""
    i_b = tl.program_id(0)
    h = tl.arange(0, BH)
    carry = tl.zeros([BH], dtype=tl.float32)
    for c in range(0, tl.cdiv(NBLK, CB)):
        blk = NBLK - (c + 1) * CB + tl.arange(0, CB)
        at = (i_b * NBLK + blk[:, None]) * BH + h[None, :]
        x = tl.load(sums + at, mask=(blk[:, None] >= 0) & (h[None, :] < BH), other=0.0)
        tl.store(after + at, tl.cumsum(x, 0, reverse=True) - x + carry[None, :], mask=blk[:, None] >= 0)
        carry += tl.sum(x, 0)


@triton.jit
def _reverse_scan_kernel(dG, after, out, T, H, NBLK, BT: tl.constexpr, BH: tl.constexpr):
    i_t, i_b = tl.program_id(0), tl.program_id(1)
    t = i_t * BT + tl.arange(0, BT)
    h = tl.arange(0, BH)
    mask = (t[:, None] < T) & (h[None, :] < H)
    at = (i_b.to(tl.int64) * T + t[:, None]) * H + h[None, :]
    x = tl.load(dG + at, mask=mask, other=0.0)
    carry = tl.load(after + (i_b * NBLK + i_t) * BH + h)
    tl.store(out + at, tl.cumsum(x, 0, reverse=True) + carry[None, :], mask=mask)


def assemble(dGq, dGk, tail=None):
    """dG [B, T, H] = sum over D tiles of (q . dq - k . dk) partials [B, T, H, n_k], + `tail` [B, H] at t = T - 1."""
    B, T, H, NK = dGq.shape
    dG = torch.empty(B, T, H, device=dGq.device, dtype=torch.float32)
    launch(_assemble_kernel, (triton.cdiv(T, BT), B), dGq, dGk, dG if tail is None else tail.contiguous(), dG,
           T, H, NK, HAS_TAIL=tail is not None, BT=BT, BH=triton.next_power_of_2(H))
    return dG


def log_decay_grad(dG, log_decay):
    """As chunked.log_decay_grad (a per-head decay keeps its one weighted reduction there)."""
    if log_decay.dim() == 1 or dG.dtype != torch.float32:
        return chunked.log_decay_grad(dG, log_decay)
    B, T, H = dG.shape
    dG = dG.contiguous()
    nblk, BH = triton.cdiv(T, BT), triton.next_power_of_2(H)
    sums = torch.empty(B, nblk, BH, device=dG.device, dtype=torch.float32)
    after = torch.empty_like(sums)
    out = torch.empty_like(dG)
    launch(_block_sums_kernel, (nblk, B), dG, sums, T, H, nblk, BT=BT, BH=BH)
    launch(_suffix_kernel, (B,), sums, after, nblk, BH=BH, CB=64)
    launch(_reverse_scan_kernel, (nblk, B), dG, after, out, T, H, nblk, BT=BT, BH=BH)
    return out.to(log_decay.dtype)
