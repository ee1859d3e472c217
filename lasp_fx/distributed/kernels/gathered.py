"""The all-gather exchange's combination step in one kernel: the decayed sum of the gathered states.

Rank r walks the gathered rows [P, n] outwards from itself, adding the log-decays it crosses
one by one (the ring's precision), where PyTorch would take about ten small launches; each
row's header is compared on the device and a mismatch gives NaN, with no host sync
(docs/design.md §4). `checked_step` is the ring's link the same way.
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
def _differs(tail, own_tail, CHECKED: tl.constexpr):
    """1 when the first CHECKED values of the header at `tail` differ from this rank's, else 0."""
    h = tl.arange(0, 32)
    got = tl.load(tail + h, mask=h < CHECKED, other=0.0)
    mine = tl.load(own_tail + h, mask=h < CHECKED, other=0.0)
    return tl.max((got != mine).to(tl.int32), 0)


@triton.jit
def _combine_kernel(
    rows, d_final, late, end, own_tail, rank, P, N, DE, ROW, TAIL,
    FORWARD: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr, BLOCK: tl.constexpr,
    CHECKED: tl.constexpr,
):  # fmt: skip
    i_e, i_bh = tl.program_id(0), tl.program_id(1)
    offs = i_e * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DE
    at = i_bh.to(tl.int64) * DE + offs
    bad = tl.full([], 0, tl.int32)
    if CHECKED > 0:
        for j in range(0, P):
            bad = tl.maximum(bad, _differs(rows + j * ROW + TAIL, own_tail, CHECKED))
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
    if CHECKED > 0:
        acc = tl.where(bad > 0, float("nan"), acc)
        own = tl.where(bad > 0, float("nan"), own)
    _store_ends(acc, own, own_a, d_final, late, end, at, mask, HAS_DECAY, HAS_FINAL)


def combine_gathered(rows: torch.Tensor, shape, rank: int, forward: bool, has_decay: bool, d_final=None,
                     own_tail=None, checked: int = 0):
    """(late, end) of the module docstring from the gathered rows [P, n] (n = state numel [+ B*H]).

    `shape` is the state's [B, H, D, E]; `d_final` (backward only) a gradient of the final state or None.
    With `own_tail` (this rank's header), every row ends with its sender's header, whose first
    `checked` values must equal own_tail's, or both results are NaN.
    """
    B, H, D, E = shape
    P, row = rows.shape
    late = rows.new_empty(shape)
    end = rows.new_empty(shape)
    BLOCK = 1024
    tail = row - (0 if own_tail is None else own_tail.numel())
    launch(
        _combine_kernel, (triton.cdiv(D * E, BLOCK), B * H),
        rows, late if d_final is None else d_final.contiguous(), late, end, rows if own_tail is None else own_tail,
        rank, P, B * H * D * E, D * E, row, tail,
        FORWARD=forward, HAS_DECAY=has_decay, HAS_FINAL=d_final is not None, BLOCK=BLOCK,
        CHECKED=0 if own_tail is None else checked, num_warps=4,
    )  # fmt: skip
    return late, end


@triton.jit
def _checked_step_kernel(
    msg, own_tail, own, a, d_final, late, end, N, DE,
    HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr, SEAL: tl.constexpr, BLOCK: tl.constexpr,
    CHECKED: tl.constexpr, TAIL: tl.constexpr,
):  # fmt: skip
    i_e, i_bh = tl.program_id(0), tl.program_id(1)
    offs = i_e * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DE
    at = i_bh.to(tl.int64) * DE + offs
    bad = _differs(msg + N, own_tail, CHECKED)
    x = tl.where(bad > 0, float("nan"), tl.load(msg + at, mask=mask, other=0.0))
    if HAS_FINAL:
        x += tl.load(d_final + at, mask=mask, other=0.0)
    s = tl.load(own + at, mask=mask, other=0.0)
    if HAS_DECAY:
        tl.store(end + at, tl.exp(tl.load(a + i_bh)) * x + s, mask=mask)
    else:
        tl.store(end + at, x + s, mask=mask)
    tl.store(late + at, x, mask=mask)
    if SEAL:
        if (i_e == 0) & (i_bh == 0):  # this rank's header after the state: the message is ready to send
            h = tl.arange(0, TAIL)
            tl.store(end + N + h, tl.load(own_tail + h))


def checked_step(msg, own_tail, own, a=None, d_final=None, seal: bool = False, checked: int = 0):
    """The ring's link in one launch: (late, end) with late = msg's state (NaN unless its header's
    first `checked` values equal own_tail's) + d_final, end = exp(a) late + own.

    msg: [n + tail] received (state then header); own: this rank's state [B, H, D, E]; a: [B, H]
    or None. With `seal`, end is the next message itself, [n + tail] (own_tail after the state);
    otherwise [B, H, D, E].
    """
    B, H, D, E = own.shape
    n, tail = own.numel(), own_tail.numel()
    late = own.new_empty(own.shape)
    end = own.new_empty(n + tail) if seal else own.new_empty(own.shape)
    BLOCK = 1024
    launch(
        _checked_step_kernel, (triton.cdiv(D * E, BLOCK), B * H),
        msg, own_tail, own.contiguous(), own if a is None else a.contiguous(),
        own if d_final is None else d_final.contiguous(), late, end, n, D * E,
        HAS_DECAY=a is not None, HAS_FINAL=d_final is not None, SEAL=seal, BLOCK=BLOCK, CHECKED=checked,
        TAIL=tail, num_warps=4,
    )  # fmt: skip
    return late, end
