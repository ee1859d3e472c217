"""Corrections by a state that arrives after the local work (LASP): one pass over the tokens each.

fwd_correct: o' = o + scale * exp(G_t) q_t s_in                  (reads q, o; writes o')
bwd_correct: dk' = dk + sum_h exp(G_T - G_t) v_t ds_out[h]^T,
             dv' = dv + sum_h exp(G_T - G_t) k_t ds_out[h],
             dG' = dG - k_t . (exp(G_T - G_t) v_t ds_out[h]^T), plus <ds_out, s_out> at t = T - 1
(G: log-decay accumulated from the slice's start, h over the query heads of a kv head). The
float32 states enter the products as two 16-bit halves (common.dot_f32b): the corrections feed
the decay gradient, whose sum over the sequence cancels heavily; the kernels are memory-bound,
so the second product costs little.
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


@triton.jit
def _bwd_correct_kernel(
    dk, dv, dG, k, v, lw, ds, dk_out, dv_out, dG_out, T, H, HK, D, E,
    HAS_DECAY: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
    BE: tl.constexpr,
):  # fmt: skip
    i_t, i_bk = tl.program_id(0), tl.program_id(1)
    i_b, i_hk = i_bk // HK, i_bk % HK
    t = i_t * BT + tl.arange(0, BT)
    valid = t < T
    rd = tl.arange(0, BD)
    re = tl.arange(0, BE)
    k_rows = (i_b.to(tl.int64) * T * HK + i_hk) * D + t[:, None].to(tl.int64) * HK * D + rd[None, :]
    v_rows = (i_b.to(tl.int64) * T * HK + i_hk) * E + t[:, None].to(tl.int64) * HK * E + re[None, :]
    k_mask = valid[:, None] & (rd[None, :] < D)
    v_mask = valid[:, None] & (re[None, :] < E)
    kt = tl.load(k + k_rows, mask=k_mask, other=0.0)
    vt = tl.load(v + v_rows, mask=v_mask, other=0.0)
    acc_k = tl.zeros([BT, BD], dtype=tl.float32)
    acc_v = tl.zeros([BT, BE], dtype=tl.float32)
    G = H // HK
    for j in range(0, G):
        i_h = i_hk * G + j
        s_base = ds + (i_b.to(tl.int64) * H + i_h) * D * E
        st = tl.load(s_base + rd[:, None] * E + re[None, :], mask=(rd[:, None] < D) & (re[None, :] < E), other=0.0)
        st_t = tl.load(s_base + rd[None, :] * E + re[:, None], mask=(rd[None, :] < D) & (re[:, None] < E), other=0.0)
        dk_h = dot_f32b(vt, st_t, SPLIT, PREC)
        dv_h = dot_f32b(kt, st, SPLIT, PREC)
        if HAS_DECAY:
            g_rows = (i_b.to(tl.int64) * T + t) * H + i_h
            w = tl.exp(tl.load(lw + g_rows, mask=valid, other=0.0))[:, None]
            dk_h *= w
            dv_h *= w
            tl.store(dG_out + g_rows, tl.load(dG + g_rows, mask=valid) - tl.sum(kt.to(tl.float32) * dk_h, 1), mask=valid)
        acc_k += dk_h
        acc_v += dv_h
    tl.store(dk_out + k_rows, tl.load(dk + k_rows, mask=k_mask).to(tl.float32) + acc_k, mask=k_mask)
    tl.store(dv_out + v_rows, tl.load(dv + v_rows, mask=v_mask).to(tl.float32) + acc_v, mask=v_mask)


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


def bwd_correct(dk, dv, dG, k, v, g, ds_out, s_out):
    """Add the terms of the final-state gradient `ds_out` that `bwd` ran without (see chunked.bwd_correct)."""
    k, v, dk, dv = k.contiguous(), v.contiguous(), dk.contiguous(), dv.contiguous()
    B, T, HK, D = k.shape
    H, E = ds_out.shape[1], v.shape[-1]
    lw = None
    if g is not None:  # G_T - G_t, summed from the end so it stays exact near the end of long slices
        a = g.float().expand(B, T, H) if g.dim() == 1 else g.float()
        lw = (torch.flip(torch.cumsum(torch.flip(a, [1]), 1), [1]) - a).contiguous()
    dk_out, dv_out = torch.empty_like(dk), torch.empty_like(dv)
    dG_out = None if dG is None else torch.empty_like(dG)
    _bwd_correct_kernel[(triton.cdiv(T, _BT), B * HK)](
        dk, dv, dk if dG is None else dG.contiguous(), k, v, dk if lw is None else lw, ds_out.float().contiguous(),
        dk_out, dv_out, dk_out if dG is None else dG_out, T, H, HK, D, E,
        HAS_DECAY=lw is not None, SPLIT=k.dtype != torch.float32, PREC=dot_precision(k.dtype),
        BT=_BT, BD=block(D), BE=block(E), num_warps=4,
    )  # fmt: skip
    if dG_out is not None:
        dG_out[:, -1] += (ds_out.float() * s_out.float()).sum((-1, -2))
    return dk_out, dv_out, dG_out
