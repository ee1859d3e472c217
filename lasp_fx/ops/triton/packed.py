"""Packed documents in the kernels: where documents start in a segment's chunks, and the rows done apart.

A program first reads where documents start in its segment's chunks (`chunk_cuts`: two bit masks
from one load each). Runs never decrease, so a chunk with no start is one run, where every mask is
all ones. A segment whose chunks need no mask at all (`packed_loop`) runs the unpacked loop: with
documents each main kernel is launched twice (PACKED false, then true) and each program runs the
loop of one launch only, so such segments keep the unpacked code, tiles and registers whole (the
packed loop's branches slow every chunk: record 2026-12-07_eighth). A start at a chunk's
first token (an edge) only stops the state there. Where one starts after a chunk's first token,
the main loop stores the rows of the chunk's first document forward in time (its last backward),
which see the state and whose pairs of tokens are all of one document, and masks the state passed
on, in a branch off the common path; a kernel of its own launched after the main one
(`out_rows_kernel`, `dq_rows_kernel`, `dkv_rows_kernel`) computes the other rows, which no state
reaches, with the pairs kept within a document (common.chunk_mask with `doc_starts`). The tiles are
read again there: that work, for one chunk in 64 with documents of 4K tokens, stays out of the main
kernels' registers (as a loop after the main one it raised them: record 2026-12-07_eighth).
"""

import triton
import triton.language as tl

from lasp_fx.ops.triton.common import (
    chunk_decay, chunk_mask, chunk_tokens, head_base, load_cols, load_rows, program_tiles,
)  # fmt: skip

MAX_CUTS = tl.constexpr(64)  # chunks of a segment that `chunk_cuts` tells apart (segment_chunks picks at most 32)


@triton.jit
def chunk_cuts(runs, i_b, t_first, T, NSUB, C: tl.constexpr, HAS_RUNS: tl.constexpr):
    """(cuts, edges): int64 bit masks over the chunks c of the segment starting at t_first. cuts: a
    document starts after the chunk's first token; edges: one starts at its first token (the state
    entering it reaches none of it). Runs never decrease, so a chunk with neither is one run: that
    of the state entering it. Both 0 without HAS_RUNS."""
    cuts = tl.sum(tl.zeros([1], dtype=tl.int64), 0)
    edges = cuts
    if HAS_RUNS:
        c = tl.arange(0, MAX_CUTS)
        base = runs + i_b.to(tl.int64) * (T + 1)
        here = c < NSUB
        t0 = t_first + c * C
        r_in = tl.load(base + tl.minimum(t0, T), mask=here, other=0)
        r_first = tl.load(base + tl.minimum(t0 + 1, T), mask=here, other=0)
        r_out = tl.load(base + tl.minimum(t0 + C, T), mask=here, other=0)
        bit = tl.full([MAX_CUTS], 1, tl.int64) << c.to(tl.int64)
        cuts = tl.sum(tl.where(r_first != r_out, bit, 0), 0)
        edges = tl.sum(tl.where(r_in != r_first, bit, 0), 0)
    return cuts, edges


@triton.jit
def packed_loop(cuts, edges, NSUB, FIRST_EDGE: tl.constexpr):
    """Whether a segment's chunk loop needs the packed code: a document starts after a chunk's first token, or at
    the first token of a chunk past the segment's first (FIRST_EDGE: of its first too), or the segment has more
    chunks than `chunk_cuts` tells apart. A segment that needs none runs the unpacked loop: the kernels are
    launched twice with documents (PACKED false, then true), each program running the loop of one launch only."""
    if not FIRST_EDGE:
        edges = edges >> 1
    return (cuts != 0) | (edges != 0) | (NSUB > MAX_CUTS)


@triton.jit
def first_set(mask, NSUB):
    """The lowest set bit of a `chunk_cuts` mask (NSUB when none of bits 0..MAX_CUTS - 1 is)."""
    c = tl.arange(0, MAX_CUTS)
    first = tl.min(tl.where(((mask >> c.to(tl.int64)) & 1) != 0, c, MAX_CUTS), 0)
    return tl.where(first < MAX_CUTS, first, NSUB)


@triton.jit
def live_chunks(cuts, edges, NSUB):
    """How many of a segment's first chunks hold tokens of the document the segment starts in: those up to the
    first with a start after its first token, before the first starting at its first token."""
    return tl.minimum(tl.minimum(first_set(cuts, NSUB) + 1, first_set(edges, NSUB)), NSUB)


@triton.jit
def in_this_launch(cuts, edges, NSUB, FIRST_EDGE: tl.constexpr, HAS_RUNS: tl.constexpr, PACKED: tl.constexpr):
    """Whether this launch runs the segment's loop: without documents the one launch (PACKED false) does, with
    them the launch whose PACKED is what the segment needs (`packed_loop`)."""
    run = not PACKED
    if HAS_RUNS:
        run = packed_loop(cuts, edges, NSUB, FIRST_EDGE) == PACKED
    return run


def loop_launches(runs) -> tuple:
    """The PACKED values a main kernel is launched with: false alone without documents, both with them."""
    return (False,) if runs is None else (False, True)


@triton.jit
def is_cut(mask, c):
    """Bit c of a `chunk_cuts` mask (past MAX_CUTS chunks: taken as set, which is always exact)."""
    return (((mask >> tl.minimum(c, MAX_CUTS - 1)) & 1) != 0) | (c >= MAX_CUTS)


@triton.jit
def cut_by(mask, c):
    """Whether any of bits 0..c of a `chunk_cuts` mask is set (past MAX_CUTS: taken as so)."""
    return ((mask << (MAX_CUTS - 1 - tl.minimum(c, MAX_CUTS - 1))) != 0) | (c >= MAX_CUTS)


@triton.jit
def chunk_ends(runs, i_b, t0, T, C: tl.constexpr):
    """The runs of the state entering the chunk at t0, of its first token and of the state leaving
    it (its last real token's)."""
    base = runs + i_b.to(tl.int64) * (T + 1)
    r_in = tl.load(base + tl.minimum(t0, T))
    return r_in, tl.load(base + tl.minimum(t0 + 1, T)), tl.load(base + tl.minimum(t0 + C, T))


@triton.jit
def token_runs(runs, i_b, t, valid, T):
    """Each token's run [C] (-1 past T): read only in a chunk where a document starts."""
    return tl.load(runs + i_b.to(tl.int64) * (T + 1) + 1 + t, mask=valid, other=-1)


@triton.jit
def doc_starts(r, rc):
    """lo [C]: the position in the chunk of the first token of each token's document (0 if it
    started before the chunk): the tokens before it of other runs r, which come first."""
    return tl.sum(((rc[None, :] < rc[:, None]) & (r[None, :] != r[:, None])).to(tl.int32), 1)


@triton.jit
def cut_rows(runs, i_b, t0, t, valid, T, C: tl.constexpr):
    """In a chunk where a document starts (or the next chunk's first token starts one): the rows of the chunk's
    first document (the main loop's), the tokens that reach the next chunk, and whether the state entering
    the chunk does."""
    r_in, r_first, r_out = chunk_ends(runs, i_b, t0, T, C)
    _, r_next, _ = chunk_ends(runs, i_b, t0 + C, T, C)
    r = token_runs(runs, i_b, t, valid, T)
    through = r_out == r_next
    return valid & (r == r_first), valid & (r == r_out) & through, (r_in == r_out) & through


@triton.jit
def out_rows(q_base, k_base, v_base, o_base, g, runs, scale, i_b, i_h, t0, rc, rd, re, T, H, HK, D, E,
               G_MODE: tl.constexpr, PREC: tl.constexpr, C: tl.constexpr):
    """The outputs of a chunk's tokens after a document start in it (the main loop stored the first
    document's): no state reaches them, and pairs of tokens stay within a document. Tiles read again."""
    t, valid = chunk_tokens(t0, T, C)
    _, r_first, _ = chunk_ends(runs, i_b, t0, T, C)
    r = token_runs(runs, i_b, t, valid, T)
    qt = load_rows(q_base, t, valid, H * D, rd, D)
    kt = load_cols(k_base, t, valid, HK * D, rd, D)
    vt = load_rows(v_base, t, valid, HK * E, re, E)
    bc = rc
    if G_MODE != 0:
        bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
    m = chunk_mask(bc, rc, G_MODE, False, doc_starts(r, rc), True)
    p = (tl.dot(qt, kt, input_precision=PREC) * m).to(vt.dtype)
    out = tl.dot(p, vt, input_precision=PREC) * scale
    o_ptr = o_base + t[:, None].to(tl.int64) * H * E + re[None, :]
    tl.store(o_ptr, out, mask=(valid & (r != r_first))[:, None] & (re[None, :] < E))


@triton.jit
def dq_rows(q_base, k_base, v_base, do_base, dq_base, g, runs, dGq, scale, i_b, i_h, i_k, n_k, t0, rc, rk, re,
            T, H, HK, D, E, G_MODE: tl.constexpr, DG: tl.constexpr, PREC: tl.constexpr, C: tl.constexpr):
    """dq of a chunk's tokens after a document start in it (the main loop stored the first
    document's) and, with DG, the pairs' share of dG of all its tokens, added to the share through
    S that the main loop stored. No state reaches these rows; pairs stay within a document."""
    t, valid = chunk_tokens(t0, T, C)
    _, r_first, _ = chunk_ends(runs, i_b, t0, T, C)
    r = token_runs(runs, i_b, t, valid, T)
    dot_ = load_rows(do_base, t, valid, H * E, re, E)
    vt = load_cols(v_base, t, valid, HK * E, re, E)
    kt = load_rows(k_base, t, valid, HK * D, rk, D)
    bc = rc
    if G_MODE != 0:
        bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
    dp = tl.dot(dot_, vt, input_precision=PREC)
    m = chunk_mask(bc, rc, G_MODE, False, doc_starts(r, rc), True)
    dqt = tl.dot((dp * m).to(kt.dtype), kt, input_precision=PREC) * scale
    tl.store(dq_base + t[:, None].to(tl.int64) * H * D + rk[None, :], dqt,
             mask=(valid & (r != r_first))[:, None] & (rk[None, :] < D))
    if DG:  # as the main loop, with the pairs of one document only
        qt = load_rows(q_base, t, valid, H * D, rk, D)
        w = dp * m * tl.dot(qt, load_cols(k_base, t, valid, HK * D, rk, D), input_precision=PREC)
        dg_ptr = dGq + ((i_b.to(tl.int64) * T + t) * H + i_h) * n_k + i_k
        dg = tl.load(dg_ptr, mask=valid, other=0.0) + (tl.sum(w, 1) - tl.sum(w, 0)) * scale
        tl.store(dg_ptr, dg, mask=valid)


@triton.jit
def dkv_rows(a_base, b_base, d_base, out_base, g, runs, scale, i_b, i_h, t0, rc, ra, rb, T, H, STRIDE_A, STRIDE_B,
             STRIDE_D, A_DIM, B_DIM, D_DIM, G_MODE: tl.constexpr, SCALE_AFTER: tl.constexpr, PREC: tl.constexpr,
             C: tl.constexpr):
    """dk (a = v, b = do, d = q, SCALE_AFTER) or dv (a = k, b = q, d = do) of a chunk's tokens before
    its last document (the main loop stored the last one's): sum over the later tokens i of their
    document of (a_j . b_i) M^T[j, i] d_i, rounded as the main loop does. No state gradient reaches
    them. Tiles read again."""
    t, valid = chunk_tokens(t0, T, C)
    _, _, r_out = chunk_ends(runs, i_b, t0, T, C)
    r = token_runs(runs, i_b, t, valid, T)
    at = load_rows(a_base, t, valid, STRIDE_A, ra, A_DIM)  # [C, BA]
    bt = load_cols(b_base, t, valid, STRIDE_B, ra, B_DIM)  # [BA, C]: b shares a's feature range
    dt = load_rows(d_base, t, valid, STRIDE_D, rb, D_DIM)  # [C, BD]
    bc = rc
    if G_MODE != 0:
        bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
    mt = chunk_mask(bc, rc, G_MODE, True, doc_starts(r, rc), True)
    pt = tl.dot(at, bt, input_precision=PREC) * mt
    if SCALE_AFTER:
        out = tl.dot(pt.to(dt.dtype), dt, input_precision=PREC) * scale
    else:
        out = tl.dot((pt * scale).to(dt.dtype), dt, input_precision=PREC)
    tl.store(out_base + t[:, None].to(tl.int64) * H * D_DIM + rb[None, :], out,
             mask=(valid & (r != r_out))[:, None] & (rb[None, :] < D_DIM))


# The rows no state reaches, as kernels of their own on the main kernels' grid (feature tile, segment, batch row x
# head), launched after them: inside them these loops, though run for one chunk in 64, set the registers of every
# chunk. A program walks only the chunks of its segment where a document starts after the first token (one
# program per chunk cost more in launching its mostly idle programs than the rows themselves).


@triton.jit
def starts_inside(runs, i_b, t0, T, C: tl.constexpr):
    """Whether a document starts after the first token of the chunk at t0."""
    _, r_first, r_out = chunk_ends(runs, i_b, t0, T, C)
    return r_first != r_out


@triton.jit
def _cut_chunks(runs, i_b, i_s, T, NSUB, C: tl.constexpr):
    """The chunks' `chunk_cuts` bit mask of segment i_s, and whether the segment has any to walk."""
    cuts, _ = chunk_cuts(runs, i_b, i_s * NSUB * C, T, NSUB, C, True)
    return cuts, (cuts != 0) | (NSUB > MAX_CUTS)


@triton.jit
def out_rows_kernel(q, k, v, g, runs, o, scale, T, H, HK, D, E, NSUB, G_MODE: tl.constexpr, PREC: tl.constexpr,
                    C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr):
    i_s, _, i_b, i_h, hk, re, rd, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, BV, BD)
    cuts, any_cut = _cut_chunks(runs, i_b, i_s, T, NSUB, C)
    if any_cut:
        v_base, o_base = head_base(v, i_b, T, HK, hk, E), head_base(o, i_b, T, H, i_h, E)
        for c in range(0, NSUB):
            t0 = (i_s * NSUB + c) * C
            if is_cut(cuts, c):
                if starts_inside(runs, i_b, t0, T, C):  # (exact past MAX_CUTS)
                    out_rows(q_base, k_base, v_base, o_base, g, runs, scale, i_b, i_h, t0, rc, rd, re, T, H, HK, D,
                             E, G_MODE, PREC, C)


@triton.jit
def dq_rows_kernel(q, k, v, g, do, runs, dq, dGq, scale, T, H, HK, D, E, NSUB, G_MODE: tl.constexpr,
                   DG: tl.constexpr, PREC: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, BE: tl.constexpr):
    i_s, _, i_b, i_h, hk, rk, re, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, BK, BE)
    cuts, any_cut = _cut_chunks(runs, i_b, i_s, T, NSUB, C)
    if any_cut:
        v_base, do_base = head_base(v, i_b, T, HK, hk, E), head_base(do, i_b, T, H, i_h, E)
        dq_base = head_base(dq, i_b, T, H, i_h, D)
        for c in range(0, NSUB):
            t0 = (i_s * NSUB + c) * C
            if is_cut(cuts, c):
                if starts_inside(runs, i_b, t0, T, C):
                    dq_rows(q_base, k_base, v_base, do_base, dq_base, g, runs, dGq, scale, i_b, i_h,
                            tl.program_id(0), tl.cdiv(D, BK), t0, rc, rk, re, T, H, HK, D, E, G_MODE, DG, PREC, C)


@triton.jit
def dkv_rows_kernel(q, k, v, g, do, runs, out, scale, T, H, HK, D, E, NSUB, G_MODE: tl.constexpr, DK: tl.constexpr,
                    PREC: tl.constexpr, C: tl.constexpr, B_OUT: tl.constexpr, B_IN: tl.constexpr):
    """dk (DK: tiles of D by B_OUT, E whole) or dv (tiles of E, D whole), per query head."""
    i_s, _, i_b, i_h, hk, r_tile, r_whole, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, B_OUT, B_IN)
    cuts, any_cut = _cut_chunks(runs, i_b, i_s, T, NSUB, C)
    if any_cut:
        v_base, do_base = head_base(v, i_b, T, HK, hk, E), head_base(do, i_b, T, H, i_h, E)
        for c in range(0, NSUB):
            t0 = (i_s * NSUB + c) * C
            if is_cut(cuts, c):
                if starts_inside(runs, i_b, t0, T, C):
                    if DK:  # a tile of D, E whole
                        dkv_rows(v_base, do_base, q_base, head_base(out, i_b, T, H, i_h, D), g, runs, scale, i_b, i_h,
                                 t0, rc, r_whole, r_tile, T, H, HK * E, H * E, H * D, E, E, D, G_MODE, True, PREC, C)
                    else:  # a tile of E, D whole
                        dkv_rows(k_base, q_base, do_base, head_base(out, i_b, T, H, i_h, E), g, runs, scale, i_b, i_h,
                                 t0, rc, r_whole, r_tile, T, H, HK * D, H * D, H * E, D, D, E, G_MODE, False, PREC, C)
