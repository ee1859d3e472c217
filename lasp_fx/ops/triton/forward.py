"""Forward: the state pass (states.py), then one output kernel over (E tile, segment, head).

Each program carries the state entering its segment in registers and walks the segment's chunks:
o = scale * [(Q K^T * M) V + exp(b) * Q S], then S <- exp(A) S + (exp(A - b) * K)^T V. A late
state (LASP's X_{r-1}) enters the segment states, so it costs no extra bytes. Packed documents
(packed.py): a segment without a start inside runs this same loop; where one starts after a chunk's
first token, the main loop stores the first document's rows, packed.out_rows_kernel the others after it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops.triton.common import (
    CHUNK, SAVED_CHUNKS, autotune_bv, block, chunk_decay, chunk_mask, chunk_tokens, decay_mode, dot_precision,
    head_base, late_state, load_cols, load_rows, program_tiles, saved_shape, segment_chunks,
)  # fmt: skip
from lasp_fx.ops.triton.packed import chunk_cuts, cut_rows, in_this_launch, is_cut, loop_launches, out_rows_kernel
from lasp_fx.ops.chunked import await_late
from lasp_fx.ops.triton.launch import launch
from lasp_fx.ops.triton.states import add_late_at_end, segment_states, with_late


@autotune_bv(key=["D", "E", "G_MODE", "NSUB", "HAS_RUNS", "PACKED"])
@triton.jit
def _out_kernel(
    q, k, v, g, S, late, A, runs, o, scale, T, H, HK, HS, D, E, NSUB, NSEG,
    G_MODE: tl.constexpr, HAS_LATE: tl.constexpr, HAS_RUNS: tl.constexpr, PACKED: tl.constexpr, NSEG_P2: tl.constexpr,
    PREC: tl.constexpr, C: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    i_s, i_bh, i_b, i_h, hk, re, rd, rc, q_base, k_base = program_tiles(q, k, T, H, HK, D, C, BV, BD)
    v_base = head_base(v, i_b, T, HK, hk, E)
    o_base = head_base(o, i_b, T, H, i_h, E)
    s_ptr = S + ((i_b.to(tl.int64) * HS + i_h // (H // HS)) * (NSEG - 1) + i_s - 1) * D * E  # none for segment 0
    # [BD, BV] float32, plus a state that entered the slice after the state pass (HAS_LATE)
    t_first = i_s * NSUB * C
    state = late_state(
        s_ptr, late, A, i_bh, i_s, rd[:, None], re[None, :], D, E, NSEG, runs, i_b, T, NSUB * C,
        G_MODE, HAS_LATE, False, NSEG_P2, HAS_RUNS,
    )  # fmt: skip
    cuts, edges = chunk_cuts(runs, i_b, t_first, T, NSUB, C, HAS_RUNS)
    if HAS_RUNS:
        if (edges & 1) != 0:  # a document starts at the segment's first token: no state enters it
            state = tl.zeros_like(state)
    if in_this_launch(cuts, edges, NSUB, False, HAS_RUNS, PACKED):
        for c in range(0, NSUB):  # chunks past T are masked to no-ops (the interpreter needs a plain bound)
            t0 = t_first + c * C
            t, valid = chunk_tokens(t0, T, C)
            qt = load_rows(q_base, t, valid, H * D, rd, D)  # [C, BD]
            kt = load_cols(k_base, t, valid, HK * D, rd, D)  # [BD, C]
            vt = load_rows(v_base, t, valid, HK * E, re, E)  # [C, BV]
            scores = tl.dot(qt, kt, input_precision=PREC)  # [C, C]
            inter = tl.dot(qt, state.to(qt.dtype), input_precision=PREC)  # [C, BV]
            if G_MODE == 0:
                m = chunk_mask(rc, rc, G_MODE, False, rc, False)
            else:
                bc, a = chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE)
                inter = inter * tl.exp2(bc)[:, None]
                w_out = tl.exp2(a - bc)  # from each token to the chunk's end
                carry = tl.exp2(a)
                m = chunk_mask(bc, rc, G_MODE, False, rc, False)
            p = (scores * m).to(vt.dtype)
            out = (tl.dot(p, vt, input_precision=PREC) + inter) * scale
            o_ptr = o_base + t[:, None].to(tl.int64) * H * E + re[None, :]
            rows = valid
            if PACKED:
                if is_cut(cuts, c) | is_cut(edges, c + 1):  # a document starts after the chunk's first token (its
                    # first document's rows here, the others in the rows kernel), or at the next chunk's first token
                    rows, reach, keep = cut_rows(runs, i_b, t0, t, valid, T, C)
                    if G_MODE == 0:  # k read again, masked: kt stays in shared memory on the common path
                        kw = load_cols(k_base, t, reach, HK * D, rd, D)
                        state = tl.where(keep, state, 0.0) + tl.dot(kw, vt, input_precision=PREC)
                    else:
                        kw = (kt * tl.where(reach, w_out, 0.0)[None, :]).to(kt.dtype)
                        state = state * tl.where(keep, carry, 0.0) + tl.dot(kw, vt, input_precision=PREC)
                elif G_MODE == 0:
                    state += tl.dot(kt, vt, input_precision=PREC)
                else:
                    state = state * carry + tl.dot((kt * w_out[None, :]).to(kt.dtype), vt, input_precision=PREC)
            elif G_MODE == 0:
                state += tl.dot(kt, vt, input_precision=PREC)
            tl.store(o_ptr, out, mask=rows[:, None] & (re[None, :] < E))
            if G_MODE != 0 and not PACKED:
                kw = (kt * w_out[None, :]).to(kt.dtype)
                state = state * carry + tl.dot(kw, vt, input_precision=PREC)


def fwd(
    q, k, v, g, scale: float, s_in=None, state_hook=None, nsub: int | None = None, save: bool = False, runs=None,
):  # fmt: skip
    """Output and final state of one slice with state `s_in` [B, H, D, E] flowing in (see chunked.fwd).

    `state_hook(s_local)` runs after the state pass and before the output kernel; a late state
    it hands back enters the output kernel's segment states (common.late_state), not a second pass.
    `nsub` (chunks per segment) is chosen from the sizes when None.

    `save=True` also returns the segment states for `bwd(saved=...)`, shaped `common.saved_shape`
    (empty unless the segments are SAVED_CHUNKS long), the same whether or not the backward
    computes the decay's gradient. `runs` [B, T + 1] int32: packed documents (packed.py, chunked.fwd).

    Returns (o [B, T, H, E] in q's dtype, s_out [B, H, D, E] float32), and the saved states with `save`.
    """
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    B, T, H, D = q.shape
    HK, E = k.shape[2], v.shape[3]
    g_mode, g = decay_mode(g)
    HS = HK if g_mode == 0 else H  # without decay the query heads of one kv head share every state
    nsub = nsub or segment_chunks(-(-T // CHUNK), B * H, q.device)
    runs = None if runs is None else runs.to(torch.int32).contiguous()
    S, A, s_out = segment_states(k, v, g_mode, g, HS, nsub, runs=runs)
    if HS != H:
        s_out = s_out.repeat_interleave(H // HS, dim=1)
    # s_in enters as a late state (common.late_state), so S holds the tokens' states alone: the
    # backward reuses them whatever state flowed in.
    entering, s_out = (None, s_out) if s_in is None else add_late_at_end(s_out, s_in, A, runs)
    late = await_late(state_hook, s_out)
    s_late, s_out = with_late(s_out, None if late is None else late(), A, runs)
    s_late = entering if s_late is None else (s_late if entering is None else s_late + entering)
    o = torch.empty(B, T, H, E, device=q.device, dtype=q.dtype)
    nseg = -(-T // (CHUNK * nsub))
    common = dict(
        G_MODE=g_mode, NSEG_P2=triton.next_power_of_2(nseg), PREC=dot_precision(q.dtype), C=CHUNK, BD=block(D)
    )
    gp, Ap = S if g is None else g, S if A is None else A
    rp = S if runs is None else runs
    grid = lambda META: (triton.cdiv(E, META["BV"]), nseg, B * H)  # noqa: E731
    for packed in loop_launches(runs):  # each segment's outputs from one of them (packed.packed_loop)
        launch(
            _out_kernel, grid,
            q, k, v, gp, S, S if s_late is None else s_late, Ap, rp, o, scale, T, H, HK, HS, D, E, nsub, nseg,
            HAS_LATE=s_late is not None, HAS_RUNS=runs is not None, PACKED=packed, **common,
        )  # fmt: skip
    if runs is not None:  # the rows after a document start inside a chunk (packed.py)
        launch(out_rows_kernel, (triton.cdiv(E, 64), nseg, B * H), q, k, v, gp, runs, o, scale, T, H, HK, D, E, nsub,
               G_MODE=g_mode, PREC=common["PREC"], C=CHUNK, BD=block(D), BV=64, num_warps=4)
    if not save:
        return o, s_out
    return o, s_out, S if nsub == SAVED_CHUNKS else S.new_empty(saved_shape(q, v, g, HK))
