"""The all-gather exchange's combination step in one kernel: the decayed sum of the gathered states.

LASP's all-gather (distributed/allgather.py) leaves every rank with the rows [P, n] of all
ranks: each row a state (or state gradient) [B, H, D, E] followed, with decay, by the slice's
total log-decay [B, H]. Rank r needs

    forward    late = sum_{j<r} exp(A_{j+1} + ... + A_{r-1}) S_j   (X_{r-1})
               end  = exp(A_r) late + S_r                          (X_r)
    backward   m    = sum_{j>r} exp(A_{r+1} + ... + A_{j-1}) N_j
               late = m + d_final                                  (ds_out)
               end  = exp(A_r) m + N_r                             (M_r)

In PyTorch that is ~10 launches of a few microseconds each (select, sum, exp, product, sum,
exp, addcmul, ...) and ~0.15 ms of host time per direction; here one launch walks the rows from
rank r outwards, adding the log-decays it crosses one by one (sums, never differences of long
cumulative sums: the same precision as the ring's chain of steps). Bytes: P x n floats read, two
written; at P = 4, 1 MiB states: 6 MiB, ~2 us.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops.triton.launch import launch


@triton.jit
def _add_crossed(acc, log_w, x, a, HAS_DECAY: tl.constexpr):
    """Add a state on the walk out from this rank, weighted by the log-decays crossed so far; then cross its slice."""
    if HAS_DECAY:
        return acc + tl.exp(log_w) * x, log_w + a
    return acc + x, log_w


@triton.jit
def _store_ends(acc, own, own_a, d_final, late, end, at, mask, HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr):
    if HAS_DECAY:
        tl.store(end + at, tl.exp(own_a) * acc + own, mask=mask)
    else:
        tl.store(end + at, acc + own, mask=mask)
    if HAS_FINAL:
        acc += tl.load(d_final + at, mask=mask, other=0.0)
    tl.store(late + at, acc, mask=mask)


@triton.jit
def _combine_kernel(
    rows, d_final, late, end, rank, P, N, DE, ROW,
    FORWARD: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    i_e, i_bh = tl.program_id(0), tl.program_id(1)
    offs = i_e * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DE
    at = i_bh.to(tl.int64) * DE + offs
    acc = tl.zeros([BLOCK], dtype=rows.dtype.element_ty)
    log_w = tl.full([], 0.0, dtype=rows.dtype.element_ty)
    n_terms = rank if FORWARD else P - 1 - rank
    for i in range(0, n_terms):
        j = rank - 1 - i if FORWARD else rank + 1 + i
        x = tl.load(rows + j * ROW + at, mask=mask, other=0.0)
        a = tl.load(rows + j * ROW + N + i_bh) if HAS_DECAY else log_w
        acc, log_w = _add_crossed(acc, log_w, x, a, HAS_DECAY)
    own = tl.load(rows + rank * ROW + at, mask=mask, other=0.0)
    own_a = tl.load(rows + rank * ROW + N + i_bh) if HAS_DECAY else log_w
    _store_ends(acc, own, own_a, d_final, late, end, at, mask, HAS_DECAY, HAS_FINAL)


def combine_gathered(rows: torch.Tensor, shape, rank: int, forward: bool, has_decay: bool, d_final=None):
    """(late, end) of the module docstring from the gathered rows [P, n] (n = state numel [+ B*H]).

    `shape` is the state's [B, H, D, E]; `d_final` (backward only) a gradient of the final state or None.
    """
    B, H, D, E = shape
    P, row = rows.shape
    late = rows.new_empty(shape)
    end = rows.new_empty(shape)
    BLOCK = 1024
    launch(
        _combine_kernel, (triton.cdiv(D * E, BLOCK), B * H),
        rows, late if d_final is None else d_final.contiguous(), late, end, rank, P, B * H * D * E, D * E, row,
        FORWARD=forward, HAS_DECAY=has_decay, HAS_FINAL=d_final is not None, BLOCK=BLOCK, num_warps=4,
    )  # fmt: skip
    return late, end
