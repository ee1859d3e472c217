"""The all-gather exchange's combination step in one kernel: the decayed sum of the gathered states.

Rank r walks the gathered rows [P, n] outwards from itself, adding the log-decays it crosses
one by one (the ring's precision), where PyTorch would take about ten small launches; each
row's header is compared on the device and a mismatch gives NaN, with no host sync, and is
written into the group's watch (distributed/watch.py: raised at the next step; docs/design.md §4).
`checked_step` is the ring's link the same way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.distributed import header
from lasp_fx.ops.triton.launch import launch

_HEAD = header.SIZE


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
def _note(watch, j, P, tail, own_tail, bad, N_TAIL: tl.constexpr, HEAD: tl.constexpr):
    """Where `bad`: record in the watch (distributed/watch.py, [P + 1, 1 + HEAD]) that the message from
    rank j differed: its flag, its header's first N_TAIL values (at `tail`) and this rank's header."""
    h = tl.arange(0, HEAD)
    row = watch + j * (HEAD + 1)
    tl.store(row, 1.0, mask=bad)
    tl.store(row + 1 + h, tl.load(tail + h, mask=bad & (h < N_TAIL), other=0.0).to(tl.float32), mask=bad & (h < N_TAIL))
    own = watch + P * (HEAD + 1)
    tl.store(own, 1.0, mask=bad)
    tl.store(own + 1 + h, tl.load(own_tail + h, mask=bad, other=0.0).to(tl.float32), mask=bad)


@triton.jit
def _combine_kernel(
    rows, d_final, late, end, own_tail, watch, rank, P, N, DE, ROW, TAIL,
    FORWARD: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr, BLOCK: tl.constexpr,
    CHECKED: tl.constexpr, WATCH: tl.constexpr, HEAD: tl.constexpr,
):  # fmt: skip
    i_e, i_bh = tl.program_id(0), tl.program_id(1)
    offs = i_e * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DE
    at = i_bh.to(tl.int64) * DE + offs
    bad = tl.full([], 0, tl.int32)
    if CHECKED > 0:
        for j in range(0, P):
            differs = _differs(rows + j * ROW + TAIL, own_tail, CHECKED)
            bad = tl.maximum(bad, differs)
            if WATCH:  # one program writes the record: every program computes the same
                _note(watch, j, P, rows + j * ROW + TAIL, own_tail, (differs > 0) & (i_e == 0) & (i_bh == 0),
                      HEAD, HEAD)
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
                     own_tail=None, checked: int = 0, watch=None):
    """(late, end) of the module docstring from the gathered rows [P, n] (n = state numel [+ B*H]).

    `shape` is the state's [B, H, D, E]; `d_final` (backward only) a gradient of the final state or None.
    With `own_tail` (this rank's header), every row ends with its sender's header, whose first
    `checked` values must equal own_tail's, or both results are NaN; with `watch` (Watch.rows,
    distributed/watch.py) each such row's header and own_tail are also written there.
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
        rows if watch is None else watch, rank, P, B * H * D * E, D * E, row, tail,
        FORWARD=forward, HAS_DECAY=has_decay, HAS_FINAL=d_final is not None, BLOCK=BLOCK,
        CHECKED=0 if own_tail is None else checked, WATCH=watch is not None and own_tail is not None, HEAD=_HEAD,
        num_warps=4,
    )  # fmt: skip
    return late, end


@triton.jit
def _checked_step_kernel(
    msg, own_tail, own, a, d_final, late, end, watch, src, P, N, DE,
    HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr, SEAL: tl.constexpr, BLOCK: tl.constexpr,
    CHECKED: tl.constexpr, TAIL: tl.constexpr, WATCH: tl.constexpr, STATUS_AT: tl.constexpr,
    RELAYED: tl.constexpr,
):  # fmt: skip
    i_e, i_bh = tl.program_id(0), tl.program_id(1)
    offs = i_e * BLOCK + tl.arange(0, BLOCK)
    mask = offs < DE
    at = i_bh.to(tl.int64) * DE + offs
    bad = _differs(msg + N, own_tail, CHECKED)
    if WATCH:
        _note(watch, src, P, msg + N, own_tail, (bad > 0) & (i_e == 0) & (i_bh == 0), TAIL, TAIL)
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
            # RELAYED where the received header differed: the next rank records a mismatch too, not only NaN
            tl.store(end + N + h, tl.where((h == STATUS_AT) & (bad > 0), RELAYED, tl.load(own_tail + h)))


def checked_step(msg, own_tail, own, a=None, d_final=None, seal: bool = False, checked: int = 0, watch=None,
                 src: int = 0):
    """The ring's link in one launch: (late, end) with late = msg's state (NaN unless its header's
    first `checked` values equal own_tail's) + d_final, end = exp(a) late + own.

    msg: [n + tail] received (state then header); own: this rank's state [B, H, D, E]; a: [B, H]
    or None. With `seal`, end is the next message itself, [n + tail] (own_tail after the state,
    its status RELAYED where msg's header differed); otherwise [B, H, D, E]. With `watch`
    (Watch.rows, distributed/watch.py) a differing header is written there as rank `src`'s.
    """
    B, H, D, E = own.shape
    n, tail = own.numel(), own_tail.numel()
    late = own.new_empty(own.shape)
    end = own.new_empty(n + tail) if seal else own.new_empty(own.shape)
    BLOCK = 1024
    launch(
        _checked_step_kernel, (triton.cdiv(D * E, BLOCK), B * H),
        msg, own_tail, own.contiguous(), own if a is None else a.contiguous(),
        own if d_final is None else d_final.contiguous(), late, end, own if watch is None else watch, src,
        0 if watch is None else watch.shape[0] - 1, n, D * E,
        HAS_DECAY=a is not None, HAS_FINAL=d_final is not None, SEAL=seal, BLOCK=BLOCK, CHECKED=checked,
        TAIL=tail, WATCH=watch is not None, STATUS_AT=header.STATUS_AT, RELAYED=header.RELAYED, num_warps=4,
    )  # fmt: skip
    return late, end
