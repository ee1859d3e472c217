"""Forward correction by a state that arrives after the local work (LASP): one pass over the tokens.

fwd_correct: o' = o + scale * exp(G_t) q_t s_in      (G: log-decay accumulated from the slice's
start; reads q, o, writes o'). s_in enters the product as two 16-bit halves (common.dot_f32b):
the kernel is memory-bound, so the second product costs little.

bwd_correct is the PyTorch one (chunked.bwd_correct, float32 einsums): a Triton version with
[D, E] state tiles in both orientations needed 279 KB of shared memory on the H100 (limit
227 KB) and was dropped rather than shipped unchecked (bench/records/2026-11-28_op/NOTES.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops.chunked import slice_cumdecay
from lasp_fx.ops.triton.common import block, dot_f32b, dot_precision, load_rows

_BT = 32  # tokens per program


@triton.jit
def _fwd_correct_kernel(
    o, q, lw, s, out, scale, T, H, D, E,
    HAS_DECAY: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
    BV: tl.constexpr,
):  # fmt: skip
    i_v, i_t, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    t = i_t * BT + tl.arange(0, BT)
    valid = t < T
    rd = tl.arange(0, BD)
    re = i_v * BV + tl.arange(0, BV)
    qt = load_rows(q + (i_b.to(tl.int64) * T * H + i_h) * D, t, valid, H * D, rd, D)
    st = tl.load(s + i_bh.to(tl.int64) * D * E + rd[:, None] * E + re[None, :], mask=(rd[:, None] < D) & (re[None, :] < E))
    corr = dot_f32b(qt, st, SPLIT, PREC) * scale
    if HAS_DECAY:
        corr *= tl.exp(tl.load(lw + (i_b.to(tl.int64) * T + t) * H + i_h, mask=valid, other=0.0))[:, None]
    rows = (i_b.to(tl.int64) * T * H + i_h) * E + t[:, None].to(tl.int64) * H * E + re[None, :]
    mask = valid[:, None] & (re[None, :] < E)
    tl.store(out + rows, tl.load(o + rows, mask=mask).to(tl.float32) + corr, mask=mask)


def fwd_correct(o, q, g, scale: float, s_in):
    """o + scale * exp(G_t) q_t s_in: the contribution of a state that arrived after `fwd`."""
    q, o = q.contiguous(), o.contiguous()
    B, T, H, D = q.shape
    E = o.shape[-1]
    G = slice_cumdecay(g, B, T, H, torch.float32)
    out = torch.empty_like(o)
    BV = min(block(E), 64)
    _fwd_correct_kernel[(triton.cdiv(E, BV), triton.cdiv(T, _BT), B * H)](
        o, q, o if G is None else G.contiguous(), s_in.float().contiguous(), out, scale, T, H, D, E,
        HAS_DECAY=G is not None, SPLIT=q.dtype != torch.float32, PREC=dot_precision(q.dtype),
        BT=_BT, BD=block(D), BV=BV, num_warps=4,
    )  # fmt: skip
    return out
