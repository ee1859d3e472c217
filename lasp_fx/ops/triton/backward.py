"""Backward: both state passes (states.py), then dq (forward in time), dk and dv (reverse in time).

dG = q . dq - k . dk is summed along the sequence, where pairs of tokens cancel; so every state
increment is formed from the same 16-bit operands on both sides, the products through a state
take the float32 state split in two (common.dot_f32b), and the intra-chunk part is the row and
column sums of one fp32 matrix: dG is then as accurate as the other gradients at any T
(docs/design.md §2). Transposed operands are loaded transposed or computed as their own product.

Packed documents (HAS_RUNS, packed.py): the terms through S reach only the tokens of the
document the state belongs to (dq: the chunk's first document; dk, dv: its last), and a chunk
with a document start passes no state gradient back across it. A segment without one runs the
unpacked loop (packed.packed_loop); in a chunk with a start after its first token the main loop
stores those rows and the rows kernel after it the others (and dG's share of the pairs of tokens,
added to the share through S stored before: one read back of dG per such chunk).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops.triton.common import (
    CHUNK, SAVE_STATES, SAVED_CHUNKS, autotune, autotune_bv, backward_split, block, chunk_decay, chunk_mask, chunk_tokens, config,
    decay_mode, dot_f32b, dot_precision, head_base, late_state, load_cols, load_rows, program_tiles, segment_chunks,
)  # fmt: skip
from lasp_fx.ops.triton.packed import (
    chunk_cuts, chunk_ends, cut_rows, dkv_rows_kernel, dq_rows_kernel, in_this_launch, is_cut, loop_launches,
    starts_inside, token_runs,
)  # fmt: skip
from lasp_fx.ops.chunked import await_late
from lasp_fx.ops.triton.decay_grad import assemble as assemble_dG
from lasp_fx.ops.triton.launch import launch
from lasp_fx.ops.triton.states import add_late_at_end, segment_states, with_late

# The first is the untuned default (LASP_FX_AUTOTUNE=0, and the GPU checks): the one the tuner picks on the H100
# (record 2026-12-07_ninth), so what is checked is what runs.
_TUNE = [config(4), config(8), config(8, num_stages=3)]


@autotune(_TUNE, key=["D", "E", "G_MODE", "DG", "NSUB", "HAS_RUNS", "PACKED"])
@triton.jit
def _dq_kernel(
    q, k, v, g, do, S, late, A, runs, dq, dGq, scale, T, H, HK, HS, D, E, NSUB, NSEG,
    G_MODE: tl.constexpr, HAS_LATE: tl.constexpr, HAS_RUNS: tl.constexpr, PACKED: tl.constexpr,
    NSEG_P2: tl.constexpr, DG: tl.constexpr,
    SPLIT: tl.constexpr, PREC: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr,
):  # fmt: skip
    i_s, i_bh, i_b, i_h, hk, rk, re, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, BK, BE)
    i_k = tl.program_id(0)
    v_base = head_base(v, i_b, T, HK, hk, E)
    do_base = head_base(do, i_b, T, H, i_h, E)
    dq_base = head_base(dq, i_b, T, H, i_h, D)
    s_ptr = S + ((i_b.to(tl.int64) * HS + i_h // (H // HS)) * (NSEG - 1) + i_s - 1) * D * E  # none for segment 0
    # S^T, plus an incoming state (s_in: the saved states hold the tokens' own states alone)
    st = late_state(s_ptr, late, A, i_bh, i_s, rk[None, :], re[:, None], D, E, NSEG, runs, i_b, T, NSUB * C,
                    G_MODE, HAS_LATE, False, NSEG_P2, HAS_RUNS)
    n_k = tl.cdiv(D, BK)
    cuts, edges = chunk_cuts(runs, i_b, i_s * NSUB * C, T, NSUB, C, HAS_RUNS)
    if HAS_RUNS:
        if (edges & 1) != 0:  # a document starts at the segment's first token: no state enters it
            st = tl.zeros_like(st)
    if in_this_launch(cuts, edges, NSUB, False, HAS_RUNS, PACKED):
        for c in range(0, NSUB):
            t0 = (i_s * NSUB + c) * C
            t, valid = chunk_tokens(t0, T, C)
            dot_ = load_rows(do_base, t, valid, H * E, re, E)  # [C, BE]
            vt = load_cols(v_base, t, valid, HK * E, re, E)  # V^T [BE, C]
            kt = load_rows(k_base, t, valid, HK * D, rk, D)  # [C, BK]
            dp = tl.dot(dot_, vt, input_precision=PREC)  # do_i . v_j
            inter = dot_f32b(dot_, st, SPLIT, PREC)  # dO S^T
            if G_MODE == 0:
                m = chunk_mask(rc, rc, G_MODE, False, rc, False)
                dq_inter = inter
            else:
                bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
                m = chunk_mask(bc, rc, G_MODE, False, rc, False)
                dq_inter = inter * tl.exp2(bc)[:, None]
                w_out = tl.exp2(a - bc)  # from each token to the chunk's end
                carry = tl.exp2(a)
            dqt = (tl.dot((dp * m).to(kt.dtype), kt, input_precision=PREC) + dq_inter) * scale
            dq_ptr = dq_base + t[:, None].to(tl.int64) * H * D + rk[None, :]
            rows = valid
            if PACKED:
                # (false) whether a document starts after the chunk's first token: the rows kernel adds the pairs' dG
                inside = t0 < 0
                if is_cut(cuts, c) | is_cut(edges, c + 1):  # as the output kernel: the rows of the first document
                    rows, reach, keep = cut_rows(runs, i_b, t0, t, valid, T, C)
                    inside = starts_inside(runs, i_b, t0, T, C)
                    if G_MODE == 0:  # k read again, masked: kt stays in shared memory on the common path
                        kw = load_rows(k_base, t, reach, HK * D, rk, D)
                        st = tl.where(keep, st, 0.0) + tl.dot(vt, kw, input_precision=PREC)
                    else:
                        kw = (kt * tl.where(reach, w_out, 0.0)[:, None]).to(kt.dtype)
                        st = st * tl.where(keep, carry, 0.0) + tl.dot(vt, kw, input_precision=PREC)
                elif G_MODE == 0:
                    st += tl.dot(vt, kt, input_precision=PREC)
                else:
                    st = st * carry + tl.dot(vt, (kt * w_out[:, None]).to(kt.dtype), input_precision=PREC)
            elif G_MODE == 0:
                st += tl.dot(vt, kt, input_precision=PREC)
            tl.store(dq_ptr, dqt, mask=rows[:, None] & (rk[None, :] < D))
            if DG:
                # The intra-chunk parts of q . dq and k . dk are the row and column sums of one
                # matrix W = dP * M * (Q K^T) (this D tile's share), kept in fp32 rather than taken
                # from the 16-bit copy of dP * M that fed the dot, so their chunk totals cancel.
                # Both sums are taken here: the dk kernel adds only its part through dS.
                qt = load_rows(q_base, t, valid, H * D, rk, D)
                # through S: with exp(b) q rounded as in dS's increments (module docstring)
                qw = (qt * tl.exp2(bc)[:, None]).to(qt.dtype).to(tl.float32)
                s = tl.dot(qt, load_cols(k_base, t, valid, HK * D, rk, D), input_precision=PREC)
                w = dp * m * s
                pairs = tl.sum(w, 1) - tl.sum(w, 0)
                through = tl.sum(qw * inter, 1)
                if PACKED:  # a start after the first token: the share through S of the rows stored above,
                    # the pairs' in packed.dq_rows_kernel
                    through = tl.where(rows, through, 0.0)
                    pairs = tl.where(inside, 0.0, pairs)
                dg_ptr = dGq + ((i_b.to(tl.int64) * T + t) * H + i_h) * n_k + i_k
                tl.store(dg_ptr, (pairs + through) * scale, mask=valid)
            if G_MODE != 0 and not PACKED:
                kw = (kt * w_out[:, None]).to(kt.dtype)
                st = st * carry + tl.dot(vt, kw, input_precision=PREC)


@autotune(_TUNE, key=["D", "E", "G_MODE", "DG", "NSUB", "HAS_RUNS", "PACKED"])
@triton.jit
def _dk_kernel(
    q, k, v, g, do, dS, late, A, runs, dk, dGk, scale, T, H, HK, D, E, NSUB, NSEG,
    G_MODE: tl.constexpr, HAS_LATE: tl.constexpr, HAS_RUNS: tl.constexpr, PACKED: tl.constexpr,
    NSEG_P2: tl.constexpr, DG: tl.constexpr,
    SPLIT: tl.constexpr, PREC: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr,
):  # fmt: skip
    i_s, i_bh, i_b, i_h, hk, rk, re, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, BK, BE)
    i_k = tl.program_id(0)
    v_base = head_base(v, i_b, T, HK, hk, E)
    do_base = head_base(do, i_b, T, H, i_h, E)
    dk_base = head_base(dk, i_b, T, H, i_h, D)  # per query head (H == HK without GQA)
    s_ptr = dS + ((i_b.to(tl.int64) * H + i_h) * NSEG + i_s) * D * E
    dst = late_state(s_ptr, late, A, i_bh, i_s, rk[None, :], re[:, None], D, E, NSEG, runs, i_b, T, NSUB * C,
                     G_MODE, HAS_LATE, True, NSEG_P2, HAS_RUNS)
    n_k = tl.cdiv(D, BK)
    cuts, edges = chunk_cuts(runs, i_b, i_s * NSUB * C, T, NSUB, C, HAS_RUNS)
    if in_this_launch(cuts, edges, NSUB, False, HAS_RUNS, PACKED):
        for ci in range(0, NSUB):
            c = NSUB - 1 - ci
            t0 = (i_s * NSUB + c) * C
            t, valid = chunk_tokens(t0, T, C)
            vt = load_rows(v_base, t, valid, HK * E, re, E)  # [C, BE]
            dot_ = load_cols(do_base, t, valid, H * E, re, E)  # dO^T [BE, C]
            qt = load_rows(q_base, t, valid, H * D, rk, D)  # [C, BK]
            dpt = tl.dot(vt, dot_, input_precision=PREC)  # dP^T: v_j . do_i
            inter = dot_f32b(vt, dst, SPLIT, PREC)  # V dS^T
            if G_MODE == 0:
                mt = chunk_mask(rc, rc, G_MODE, True, rc, False)
                dk_inter = inter
            else:
                bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
                mt = chunk_mask(bc, rc, G_MODE, True, rc, False)
                dk_inter = inter * tl.exp2(a - bc)[:, None]
                w_in = tl.exp2(bc)  # from the chunk's start to each token
                carry = tl.exp2(a)
            dkt = tl.dot((dpt * mt).to(qt.dtype), qt, input_precision=PREC) * scale + dk_inter
            dk_ptr = dk_base + t[:, None].to(tl.int64) * H * D + rk[None, :]
            rows = valid
            if PACKED:
                if is_cut(cuts, c) | is_cut(edges, c):  # a document starts in the chunk (packed.py): the last
                    # document's rows (the others in the rows kernel: no state gradient reaches them), and only the
                    # first one reaches dS before the chunk
                    r_in, _, r_out = chunk_ends(runs, i_b, t0, T, C)
                    r = token_runs(runs, i_b, t, valid, T)
                    rows = valid & (r == r_out)
                    if G_MODE == 0:  # q read again, masked: qt stays in shared memory on the common path
                        qw = load_rows(q_base, t, valid & (r == r_in), H * D, rk, D)
                        dst = tl.where(r_in == r_out, dst, 0.0) + tl.dot(dot_, qw, input_precision=PREC) * scale
                    else:
                        qw = (qt * tl.where(r == r_in, w_in, 0.0)[:, None]).to(qt.dtype)
                        dst = dst * tl.where(r_in == r_out, carry, 0.0) + tl.dot(dot_, qw, input_precision=PREC) * scale
                elif G_MODE == 0:
                    dst += tl.dot(dot_, qt, input_precision=PREC) * scale
                else:
                    dst = dst * carry + tl.dot(dot_, (qt * w_in[:, None]).to(qt.dtype), input_precision=PREC) * scale
            elif G_MODE == 0:
                dst += tl.dot(dot_, qt, input_precision=PREC) * scale
            tl.store(dk_ptr, dkt, mask=rows[:, None] & (rk[None, :] < D))
            if DG:  # k . dk through dS, with exp(a - b) k rounded as in S's increments (module docstring)
                kt = load_rows(k_base, t, valid, HK * D, rk, D)
                kw = (kt * tl.exp2(a - bc)[:, None]).to(kt.dtype).to(tl.float32)
                through = tl.sum(kw * inter, 1)
                if PACKED:  # only the rows stored above get dS
                    through = tl.where(rows, through, 0.0)
                dg_ptr = dGk + ((i_b.to(tl.int64) * T + t) * H + i_h) * n_k + i_k
                tl.store(dg_ptr, through, mask=valid)
            if G_MODE != 0 and not PACKED:
                qw = (qt * w_in[:, None]).to(qt.dtype)
                dst = dst * carry + tl.dot(dot_, qw, input_precision=PREC) * scale


@autotune_bv(key=["D", "E", "G_MODE", "NSUB", "HAS_RUNS", "PACKED"])
@triton.jit
def _dv_kernel(
    q, k, g, do, dS, late, A, runs, dv, scale, T, H, HK, D, E, NSUB, NSEG,
    G_MODE: tl.constexpr, HAS_LATE: tl.constexpr, HAS_RUNS: tl.constexpr, PACKED: tl.constexpr,
    NSEG_P2: tl.constexpr, PREC: tl.constexpr,
    C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    i_s, i_bh, i_b, i_h, hk, re, rd, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, BV, BD)
    do_base = head_base(do, i_b, T, H, i_h, E)
    dv_base = head_base(dv, i_b, T, H, i_h, E)  # per query head (H == HK without GQA)
    s_ptr = dS + ((i_b.to(tl.int64) * H + i_h) * NSEG + i_s) * D * E
    ds = late_state(s_ptr, late, A, i_bh, i_s, rd[:, None], re[None, :], D, E, NSEG, runs, i_b, T, NSUB * C,
                    G_MODE, HAS_LATE, True, NSEG_P2, HAS_RUNS)
    cuts, edges = chunk_cuts(runs, i_b, i_s * NSUB * C, T, NSUB, C, HAS_RUNS)
    if in_this_launch(cuts, edges, NSUB, False, HAS_RUNS, PACKED):
        for ci in range(0, NSUB):
            c = NSUB - 1 - ci
            t0 = (i_s * NSUB + c) * C
            t, valid = chunk_tokens(t0, T, C)
            kt = load_rows(k_base, t, valid, HK * D, rd, D)  # [C, BD]
            qt = load_cols(q_base, t, valid, H * D, rd, D)  # Q^T [BD, C]
            dot_ = load_rows(do_base, t, valid, H * E, re, E)  # [C, BV]
            pt = tl.dot(kt, qt, input_precision=PREC)  # P^T: k_j . q_i
            inter = tl.dot(kt, ds.to(kt.dtype), input_precision=PREC)
            if G_MODE == 0:
                mt = chunk_mask(rc, rc, G_MODE, True, rc, False)
            else:
                bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
                mt = chunk_mask(bc, rc, G_MODE, True, rc, False)
                inter = inter * tl.exp2(a - bc)[:, None]
                w_in = tl.exp2(bc)  # from the chunk's start to each token
                carry = tl.exp2(a)
            dvt = tl.dot((pt * mt * scale).to(kt.dtype), dot_, input_precision=PREC) + inter
            dv_ptr = dv_base + t[:, None].to(tl.int64) * H * E + re[None, :]
            rows = valid
            if PACKED:
                if is_cut(cuts, c) | is_cut(edges, c):  # as the dk kernel
                    r_in, _, r_out = chunk_ends(runs, i_b, t0, T, C)
                    r = token_runs(runs, i_b, t, valid, T)
                    rows = valid & (r == r_out)
                    if G_MODE == 0:  # q read again, masked: qt stays in shared memory on the common path
                        qw = load_cols(q_base, t, valid & (r == r_in), H * D, rd, D)
                        ds = tl.where(r_in == r_out, ds, 0.0) + tl.dot(qw, dot_, input_precision=PREC) * scale
                    else:
                        qw = (qt * tl.where(r == r_in, w_in, 0.0)[None, :]).to(qt.dtype)
                        ds = ds * tl.where(r_in == r_out, carry, 0.0) + tl.dot(qw, dot_, input_precision=PREC) * scale
                elif G_MODE == 0:
                    ds += tl.dot(qt, dot_, input_precision=PREC) * scale
                else:
                    ds = ds * carry + tl.dot((qt * w_in[None, :]).to(qt.dtype), dot_, input_precision=PREC) * scale
            elif G_MODE == 0:
                ds += tl.dot(qt, dot_, input_precision=PREC) * scale
            tl.store(dv_ptr, dvt, mask=rows[:, None] & (re[None, :] < E))
            if G_MODE != 0 and not PACKED:
                qw = (qt * w_in[None, :]).to(qt.dtype)
                ds = ds * carry + tl.dot(qw, dot_, input_precision=PREC) * scale


def bwd(
    q, k, v, g, scale: float, do, s_in=None, ds_out=None, state_hook=None, nsub: int | None = None,
    decay_grad: bool = True, saved=None, runs=None,
):  # fmt: skip
    """Gradients of one slice given `do` and the gradient `ds_out` of its final state (see chunked.bwd).

    `state_hook(ds_local)` runs after both state passes; the dq kernel (which needs no ds_out)
    is queued next, and only then is a late gradient awaited and folded into the segment
    states of the dk and dv kernels.

    `decay_grad=False` (a fixed decay) drops dG and the products only it needs.
    `saved` = (the states `fwd(save=True)` returned, its s_out) spares the
    forward-direction state pass when the segments are SAVED_CHUNKS long (`nsub` as fwd's).
    `runs` [B, T + 1] int32: packed documents (packed.py, chunked.bwd).

    Returns (dq, dk, dv in the input dtypes, dG [B, T, H] float32 or None when g is None or not
    decay_grad, ds_in [B, H, D, E] float32).
    """
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous()
    B, T, H, D = q.shape
    HK, E = k.shape[2], v.shape[3]
    g_mode, g = decay_mode(g)
    HS = HK if g_mode == 0 else H  # as fwd: s_in enters the dq kernel as a late state
    nsub = nsub or segment_chunks(-(-T // CHUNK), B * H, q.device)
    # dG needs, per chunk and D tile, a q.k product (dq), the state's low half in the product
    # through it (dq and dk) and a [T, H, D/BK] float32 store (each): a fixed decay skips them.
    dg = g_mode != 0 and decay_grad
    split = backward_split(g_mode, decay_grad, q.dtype)
    reuse = saved is not None and SAVE_STATES and nsub == SAVED_CHUNKS
    runs = None if runs is None else runs.to(torch.int32).contiguous()
    if reuse:
        S, s_out = saved
    else:
        S, _, s_out = segment_states(k, v, g_mode, g, HS, nsub, runs=runs)  # s_out: before s_in, unused without dG
    dS, A, ds_in = segment_states(
        q, do, g_mode, g, H, nsub, ds_out, scale=scale, reverse=True, chunkwise=dg, runs=runs
    )
    late = await_late(state_hook, ds_in)
    # s_in reaches the dq kernel's segments as a late state, decayed by the segments' log2-decays A
    # (the reverse pass sums the same chunks in the same order as the forward's: the same A)
    entering = None if s_in is None else s_in.float().contiguous()
    if dg and not reuse and entering is not None:
        s_out = add_late_at_end(s_out, entering, A, runs)[1]  # the forward's final state, for dG's last token

    nseg, prec, group = dS.shape[2], dot_precision(q.dtype), H // HK
    BK = min(block(D), 64 if block(E) <= 128 else 32)  # running dS^T [E, BK] float32 stays in registers
    n_k = triton.cdiv(D, BK)
    dq = torch.empty_like(q)
    dGq = torch.empty(B, T, H, n_k, device=q.device, dtype=torch.float32) if dg else dq
    gp = dq if g is None else g
    common = dict(G_MODE=g_mode, PREC=prec, C=CHUNK, NSEG_P2=triton.next_power_of_2(nseg), HAS_RUNS=runs is not None)
    rp = dS if runs is None else runs
    for packed in loop_launches(runs):  # each segment's rows from one of them (packed.packed_loop)
        launch(
            _dq_kernel, (n_k, nseg, B * H),
            q, k, v, gp, do, S, S if entering is None else entering, dS if A is None else A, rp, dq, dGq, scale, T, H,
            HK, HS, D, E, nsub, nseg, HAS_LATE=entering is not None, PACKED=packed, DG=dg, SPLIT=split, BK=BK,
            BE=block(E), **common,
        )  # fmt: skip
    rows = dict(G_MODE=g_mode, PREC=prec, C=CHUNK, num_warps=4)  # the rows after a start inside a chunk (packed.py)
    if runs is not None:  # after the dq kernel: dG's share of those rows adds to what it stored
        launch(dq_rows_kernel, (n_k, nseg, B * H), q, k, v, gp, do, runs, dq, dGq, scale, T, H, HK, D, E, nsub, DG=dg,
               BK=BK, BE=block(E), **rows)

    ds_late, ds_in = with_late(ds_in, None if late is None else late(), A, runs)
    if ds_late is not None:
        ds_out = ds_late if ds_out is None else ds_out.float() + ds_late
    fold = dict(HAS_LATE=ds_late is not None, **common)
    late_args = (dS if ds_late is None else ds_late, dS if A is None else A, rp)
    dk = torch.empty(B, T, H, D, device=q.device, dtype=torch.float32) if group > 1 else torch.empty_like(k)
    dv = torch.empty(B, T, H, E, device=q.device, dtype=torch.float32) if group > 1 else torch.empty_like(v)
    dGk = torch.empty_like(dGq) if dg else dq
    for packed in loop_launches(runs):
        launch(
            _dk_kernel, (n_k, nseg, B * H),
            q, k, v, gp, do, dS, *late_args, dk, dGk, scale, T, H, HK, D, E, nsub, nseg,
            PACKED=packed, DG=dg, SPLIT=split, BK=BK, BE=block(E), **fold,
        )  # fmt: skip
    if runs is not None:
        launch(dkv_rows_kernel, (n_k, nseg, B * H), q, k, v, gp, do, runs, dk, scale, T, H, HK, D, E, nsub, DK=True,
               B_OUT=BK, B_IN=block(E), **rows)
    grid = lambda META: (triton.cdiv(E, META["BV"]), nseg, B * H)  # noqa: E731
    for packed in loop_launches(runs):
        launch(_dv_kernel, grid, q, k, gp, do, dS, *late_args, dv, scale, T, H, HK, D, E, nsub, nseg, PACKED=packed,
               BD=block(D), **fold)
    if runs is not None:
        launch(dkv_rows_kernel, (triton.cdiv(E, 64), nseg, B * H), q, k, v, gp, do, runs, dv, scale, T, H, HK, D,
               E, nsub, DK=False, B_OUT=64, B_IN=block(D), **rows)
    if group > 1:
        dk = dk.view(B, T, HK, group, D).sum(3).to(k.dtype)
        dv = dv.view(B, T, HK, group, E).sum(3).to(v.dtype)

    dG = None
    if dg:
        dG = assemble_dG(dGq, dGk, None if ds_out is None else (ds_out.float() * s_out).sum((-1, -2)))
    return dq, dk, dv, dG, ds_in
