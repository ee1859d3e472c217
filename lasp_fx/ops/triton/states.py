"""State passes: per-segment local states (parallel), then an affine scan over segments.

Forward (k, v) and backward (q, do) alike: U_s = the segment's own state, then S[s+1] =
exp(A_s) S[s] + U_s, into a [B, heads, n_segments, D, E] float32 buffer of the states at the
segment boundaries and the state at the far end (docs/design.md §2).

Packed documents (runs, packed.py): a token enters U_s only if it reaches the segment's far
end (forward: no document starts after it in the segment; backward: none before it), and the
scan passes no state across a segment in which a document starts. The masks are read and applied
only in the chunks where not every token gets there, of the segments that need them (packed.packed_loop);
backward, the loop stops after the chunks of the segment's first document (packed.live_chunks).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops.triton.common import (
    CHUNK, INTERPRET, autotune, chunk_decay, chunk_tokens, config, dot_precision, head_base, load_cols, load_rows,
)  # fmt: skip
from lasp_fx.ops.triton.packed import (
    chunk_cuts, chunk_ends, cut_by, in_this_launch, is_cut, live_chunks, loop_launches, token_runs,
)  # fmt: skip
from lasp_fx.ops.chunked import split_late
from lasp_fx.ops.documents import survives
from lasp_fx.ops.triton.launch import launch


@triton.jit
def _add_chunk(acc, xw, yt, carry, total, G_MODE: tl.constexpr, TO_END: tl.constexpr, CHUNKWISE: tl.constexpr,
               PREC: tl.constexpr):
    """The segment's state so far with a chunk's tokens (x already weighted) added."""
    part = tl.dot(xw, yt, input_precision=PREC)
    if G_MODE == 0:
        return acc + part
    if TO_END:
        return acc * carry + part
    if CHUNKWISE:
        return acc + part * tl.exp2(total)
    return acc + part


@autotune([config(4, BX=64, BY=64), config(8, BX=128, BY=64), config(8, BX=128, BY=128)],
          key=["DX", "DY", "G_MODE", "NSUB", "HAS_RUNS", "PACKED"])
@triton.jit
def _local_kernel(
    x, y, g, runs, U, A, scale, T, H, HS, HX, HY, DX, DY, NSUB, NSEG,
    G_MODE: tl.constexpr, TO_END: tl.constexpr, CHUNKWISE: tl.constexpr, HAS_RUNS: tl.constexpr, PACKED: tl.constexpr,
    PREC: tl.constexpr, C: tl.constexpr, BX: tl.constexpr, BY: tl.constexpr,
):  # fmt: skip
    i_tile, i_s, i_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // HS, i_bh % HS
    n_y = tl.cdiv(DY, BY)
    rx = (i_tile // n_y) * BX + tl.arange(0, BX)
    ry = (i_tile % n_y) * BY + tl.arange(0, BY)
    x_base = head_base(x, i_b, T, HX, i_h // (HS // HX), DX)
    y_base = head_base(y, i_b, T, HY, i_h // (HS // HY), DY)

    acc = tl.zeros([BX, BY], dtype=tl.float32)
    total = tl.zeros([1], dtype=tl.float32)  # log2 decay of the segment so far
    t_seg = i_s * NSUB * C
    r_seg = t_seg
    if HAS_RUNS:  # the run of the state entering the segment: a backward term reaches it from that run only
        r_seg = tl.load(runs + i_b.to(tl.int64) * (T + 1) + t_seg)
    cuts, edges = chunk_cuts(runs, i_b, t_seg, T, NSUB, C, HAS_RUNS)
    starts = cuts | edges
    n_live = NSUB
    if PACKED and not TO_END:  # only the segment's first document reaches back to its start: the loop stops after
        # the chunk where the next one starts (none, when one starts at the segment's first token)
        n_live = live_chunks(cuts, edges, NSUB)
    # (FIRST_EDGE backward: a start at the segment's first token leaves none of it reaching back)
    if in_this_launch(cuts, edges, NSUB, not TO_END, HAS_RUNS, PACKED):
        for c in range(0, n_live):  # chunks past T are masked to no-ops
            t0 = t_seg + c * C
            t, valid = chunk_tokens(t0, T, C)
            # Packed documents (packed.py): only the tokens that get there are read, and the state is dropped where
            # none of it gets past the chunk; the runs are read only where not every token gets there. TO_END: to the
            # chunk's end, from its last document, where one starts in the chunk; else: to the segment's start, from its
            # first, once one has started since the segment's start. The mask goes into the loads, so the one product
            # below adds to the state in place: redoing it from the state before it (as a branch after the product
            # would) keeps two states live and doubles the kernel's registers.
            gets = valid
            keep = True  # whether the state so far gets past the chunk
            if PACKED:
                if TO_END:
                    cut = is_cut(cuts, c) | is_cut(edges, c)
                else:
                    cut = cut_by(starts, c)
                if cut:  # a branch that yields masks only, so the loads stay pipelined
                    r = token_runs(runs, i_b, t, valid, T)
                    if TO_END:  # the chunk's last document, and nothing from before it
                        r_in, _, r_out = chunk_ends(runs, i_b, t0, T, C)
                        gets = valid & (r == r_out)
                        keep = r_in == r_out
                    else:  # the segment's first document (none of the chunk, once it is over)
                        gets = valid & (r == r_seg)
            xt = load_cols(x_base, t, gets, HX * DX, rx, DX)  # [BX, C]
            yt = load_rows(y_base, t, valid, HY * DY, ry, DY)  # [C, BY]
            if G_MODE == 0:
                xw = xt
                carry = 1.0
                if PACKED and TO_END:
                    acc = tl.where(keep, acc, 0.0)
            else:
                bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
                carry = tl.exp2(a)
                if PACKED and TO_END:
                    carry = tl.where(keep, carry, 0.0)
                if TO_END:  # decay from each token to the chunk's end, then over the chunks after it
                    w = tl.exp2(a - bc)
                elif CHUNKWISE:  # from the chunk's start, then from the segment's: the dk kernel's 16-bit operands
                    w = tl.exp2(bc)
                else:  # from the segment's start: one weight per token
                    w = tl.exp2(total + bc)
                xw = (xt * w[None, :]).to(xt.dtype)
            acc = _add_chunk(acc, xw, yt, carry, total, G_MODE, TO_END, CHUNKWISE, PREC)
            if G_MODE != 0:
                total += a
        if PACKED and not TO_END and G_MODE != 0:  # the chunks no token of which gets there: A sums them all
            for c in range(n_live, NSUB):
                t, valid = chunk_tokens(t_seg + c * C, T, C)
                total += chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)[1]
        u_ptr = U + ((i_bh.to(tl.int64) * NSEG + i_s) * DX + rx[:, None]) * DY + ry[None, :]
        tl.store(u_ptr, acc * scale, mask=(rx[:, None] < DX) & (ry[None, :] < DY))
        if G_MODE != 0:
            if i_tile == 0:
                tl.store(A + i_bh * NSEG + i_s + tl.arange(0, 1), total)


@triton.jit
def _scan_kernel(
    U, A, runs, s0, S, s_end, NSEG, N, HEADS, T, L,
    HAS_INIT: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_RUNS: tl.constexpr, REVERSE: tl.constexpr,
    SB: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """S[s] = the running state at segment s's near boundary, SB - 1 segments per step.

    Forward (not REVERSE, no s0): the state entering segment 0 is zero and has no row; S[s - 1]
    holds segment s's, so a slice of one segment stores nothing (the saved states cost nothing
    up to 2048 tokens).

    Row i of a step's [SB, BLOCK] tile is the state at boundary p = p0 + i (in scan order): row 0
    is the carry, row i > 0 applies segment p - 1 to row i - 1 (x_i = 2^a x_{i-1} + u). One
    small product per step, so a step's loads are in flight together: a loop of one dependent
    load per segment was latency-bound.

    With HAS_RUNS a segment (of L tokens) in which a document starts passes nothing on: x_j
    reaches x_i only if none of the segments applied between them has a start.
    """
    i_blk, i_bh = tl.program_id(0), tl.program_id(1)
    r = i_blk * BLOCK + tl.arange(0, BLOCK)
    m = r < N
    rows = tl.arange(0, SB)
    u_base = U + i_bh.to(tl.int64) * NSEG * N
    s_base = S + i_bh.to(tl.int64) * (NSEG if REVERSE else NSEG - 1) * N
    if HAS_INIT:
        carry = tl.load(s0 + i_bh.to(tl.int64) * N + r, mask=m, other=0.0)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    end = tl.zeros([BLOCK], dtype=tl.float32)
    for p0 in range(0, NSEG, SB - 1):
        p = p0 + rows
        has_src = (rows > 0) & (p - 1 < NSEG)
        src = NSEG - p if REVERSE else p - 1  # the segment applied to reach boundary p
        u = tl.load(u_base + src[:, None].to(tl.int64) * N + r[None, :], mask=has_src[:, None] & m[None, :], other=0.0)
        x = tl.where(rows[:, None] == 0, carry[None, :], u)
        # x_i = sum_{j <= i} 2^(c_i - c_j) x_j with c the running log2-decay of the step: one
        # [SB, SB] x [SB, BLOCK] fp32 product (exact fp32 FMAs; differences of short sums only)
        causal = rows[:, None] >= rows[None, :]
        if HAS_RUNS:  # count the segments with a start applied so far in this step: equal counts pass
            base = runs + (i_bh // HEADS).to(tl.int64) * (T + 1)
            r_lo = tl.load(base + src * L, mask=has_src, other=0)
            r_hi = tl.load(base + tl.minimum((src + 1) * L, T), mask=has_src, other=0)
            starts = tl.cumsum((r_lo != r_hi).to(tl.int32), 0)
            causal = causal & (starts[:, None] == starts[None, :])
        if HAS_DECAY:
            c = tl.cumsum(tl.load(A + i_bh * NSEG + src, mask=has_src, other=0.0), 0)
            w = tl.exp2(tl.where(causal, c[:, None] - c[None, :], float("-inf")))
        else:
            w = tl.where(causal, 1.0, 0.0)
        x = tl.dot(w, x, input_precision="ieee")
        dst = NSEG - 1 - p if REVERSE else p - 1
        keep = (rows < SB - 1) & (p < NSEG) & (dst >= 0)
        tl.store(s_base + dst[:, None].to(tl.int64) * N + r[None, :], x, mask=keep[:, None] & m[None, :])
        end += tl.sum(tl.where((p == NSEG)[:, None], x, 0.0), 0)
        carry = tl.sum(tl.where((rows == SB - 1)[:, None], x, 0.0), 0)
    tl.store(s_end + i_bh.to(tl.int64) * N + r, end, mask=m)


def segment_states(x, y, g_mode, g, heads, nsub, s0=None, *, scale=1.0, reverse=False, chunkwise=False, runs=None):
    """States at the segment boundaries for `heads` state heads (H, or Hk when nothing differs per query head).

    Forward (reverse=False): x = k, y = v, no s0 (an incoming state enters the kernels late);
    returns the state entering each segment after the first ([B, heads, n_seg - 1, DX, DY]: the
    first's is zero) and the final state. Backward (reverse=True): x = q, y = do, s0 = the gradient
    of the final state; returns the gradient of the state leaving each segment and of the
    initial state. Also returns the segments' total log2-decays [B, heads, n_seg] (None without decay).
    `chunkwise` (backward) forms each chunk's increment as the dk kernel does, bit for bit, which
    the decay gradient needs (backward.py); the forward direction always does. `runs` [B, T + 1]
    int32 contiguous: packed documents (module docstring).
    """
    B, T, HX, DX = x.shape
    HY, DY = y.shape[2], y.shape[3]
    H = heads if g_mode == 0 else g.shape[-1]
    nseg = -(-T // (CHUNK * nsub))
    U = torch.empty(B, heads, nseg, DX, DY, device=x.device, dtype=torch.float32)
    A = torch.empty(B, heads, nseg, device=x.device, dtype=torch.float32) if g_mode else U
    grid = lambda META: (triton.cdiv(DX, META["BX"]) * triton.cdiv(DY, META["BY"]), nseg, B * heads)  # noqa: E731
    rp = U if runs is None else runs
    for packed in loop_launches(runs):  # each segment's U and A from one of them (packed.packed_loop)
        launch(
            _local_kernel, grid,
            x, y, U if g is None else g, rp, U, A, scale, T, H, heads, HX, HY, DX, DY, nsub, nseg,
            G_MODE=g_mode, TO_END=not reverse, CHUNKWISE=chunkwise, HAS_RUNS=runs is not None, PACKED=packed,
            PREC=dot_precision(x.dtype), C=CHUNK,
        )  # fmt: skip
    if not reverse and s0 is not None:
        raise ValueError("the forward direction takes an incoming state as a late state (common.late_state), not s0")
    S = torch.empty(B, heads, nseg if reverse else nseg - 1, DX, DY, device=x.device, dtype=torch.float32)
    end = torch.empty(B, heads, DX, DY, device=x.device, dtype=torch.float32)
    init = None if s0 is None else s0.float().contiguous()
    BLOCK = 1024 if INTERPRET else 128  # the interpreter runs programs one by one in Python: fewer, bigger
    launch(
        _scan_kernel, (triton.cdiv(DX * DY, BLOCK), B * heads),
        U, A, rp, U if init is None else init, S, end, nseg, DX * DY, heads, T, CHUNK * nsub,
        HAS_INIT=init is not None, HAS_DECAY=g_mode != 0, HAS_RUNS=runs is not None, REVERSE=reverse, SB=16,
        BLOCK=BLOCK, num_warps=4,
    )  # fmt: skip
    return S, (A if g_mode else None), end


def with_late(end, value, A, runs=None):
    """(late state as contiguous fp32, the far end's state with it) from what a late callable gave
    (ops.chunked.await_late): a state, whose decayed copy is added to `end` here, or a pair whose
    second half is that sum already (LASP's exchange computes it to send it on: no second time)."""
    late, new_end = split_late(value)
    if late is None:
        return None, end
    if new_end is None:
        return add_late_at_end(end, late, A, runs)
    return late.float().contiguous(), new_end.float().contiguous()


def add_late_at_end(end, late, A, runs=None):
    """The far-end state plus a late state that crossed the whole slice: (late as contiguous fp32, end').

    `A` are the segments' log2-decays from `segment_states` (None without decay); the kernels add
    the late state to every segment themselves (common.late_state), this is only the slice's end,
    which with packed documents (`runs`) it reaches only if no document starts in the slice.
    """
    late = late.float().contiguous()
    w = None if A is None else torch.exp2(A.sum(-1))  # [B, heads]
    if runs is not None:
        through = survives(runs)[:, None]
        w = through.float() if w is None else w * through
    if w is None:
        return late, end + late
    return late, torch.addcmul(end, w[..., None, None], late)
