"""LASP's all-gather and its combination in one kernel: states pushed into the peers' memory, flags, no collective.

Each program owns one tile of the state: it stores the tile into every peer that needs it and
raises that peer's flag, then waits for the flags of the tiles it needs, combines them as
gathered.py does and lowers the flags again, so the buffers need no reset and CUDA graphs
replay the kernel. A sender never waits for a tile it has not sent, a peer that never answers
makes the kernel trap after `spin` polls, and calls on one group must be ordered on one stream
(docs/design.md §4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lasp_fx.ops.triton.common import INTERPRET
from lasp_fx.distributed import header
from lasp_fx.distributed.kernels.gathered import _add_crossed, _differs, _note, _store_ends
from lasp_fx.ops.triton.launch import launch

BLOCK = 1024  # values of the state per tile (and per flag): 4 KiB per store into a peer
SLOT = BLOCK + 32  # a tile's slot: BLOCK values, the log-decay at BLOCK, the header from BLOCK + 1; 128-byte padded


@triton.jit
def _await(flag, want, status, spin, TRAP: tl.constexpr):
    """Poll `flag` (acquire, system scope) until it reads `want`; on a timeout record it and trap."""
    seen = tl.atomic_add(flag, 0, sem="acquire", scope="sys")
    polls = 0
    while (seen != want) & (polls < spin):
        seen = tl.atomic_add(flag, 0, sem="acquire", scope="sys")
        polls += 1
    if seen != want:
        tl.atomic_xchg(status, 1)
        if TRAP:  # abort the kernel: the launch fails with an error instead of hanging
            tl.inline_asm_elementwise("trap;", "=r,r", [tl.full([1], 0, tl.int32) + seen], dtype=tl.int32,
                                      is_pure=False, pack=1)
    tl.debug_barrier()  # every thread of the program reads after the flag did


@triton.jit
def _peer_kernel(
    x, a, d_final, late, end, slots, peer_slots, flags, peer_flags, status, own_tail, watch, rank, P, DE, NT, spin,
    FORWARD: tl.constexpr, HAS_DECAY: tl.constexpr, HAS_FINAL: tl.constexpr, BLOCK: tl.constexpr,
    SLOT: tl.constexpr, TRAP: tl.constexpr, CHECKED: tl.constexpr, WATCH: tl.constexpr, HEAD: tl.constexpr,
    RANK_AT: tl.constexpr,
):  # fmt: skip
    i_e, i_bh = tl.program_id(0), tl.program_id(1)
    tile = i_bh * tl.num_programs(0) + i_e
    k = tl.arange(0, BLOCK)
    mask = i_e * BLOCK + k < DE
    at = i_bh.to(tl.int64) * DE + i_e * BLOCK + k
    own = tl.load(x + at, mask=mask, other=0.0)
    own_a = tl.load(a + i_bh) if HAS_DECAY else tl.full([], 0.0, dtype=tl.float32)

    lo = rank + 1 if FORWARD else 0  # the ranks that need our state
    hi = P if FORWARD else rank
    for j in range(lo, hi):
        dst = tl.load(peer_slots + j).to(tl.pointer_type(tl.float32)) + (rank * NT + tile).to(tl.int64) * SLOT
        flag = tl.load(peer_flags + j).to(tl.pointer_type(tl.int32)) + rank * NT + tile
        _await(flag, 0, status, spin, TRAP)
        tl.store(dst + k, own, mask=mask)
        if HAS_DECAY:
            tl.store(dst + BLOCK, own_a)
        if CHECKED > 0:
            h = tl.arange(0, 32)
            tl.store(dst + BLOCK + 1 + h, tl.load(own_tail + h, mask=h < CHECKED, other=0.0), mask=h < CHECKED)
        tl.debug_barrier()  # every thread's stores precede the flag
        tl.atomic_xchg(flag, 1, sem="release", scope="sys")

    acc = tl.zeros([BLOCK], dtype=tl.float32)
    log_w = tl.full([], 0.0, dtype=tl.float32)
    bad = tl.full([], 0, tl.int32)
    n_terms = rank if FORWARD else P - 1 - rank
    for i in range(0, n_terms):
        j = rank - 1 - i if FORWARD else rank + 1 + i
        src = slots + (j * NT + tile).to(tl.int64) * SLOT
        flag = flags + j * NT + tile
        _await(flag, 1, status, spin, TRAP)
        xj = tl.load(src + k, mask=mask, other=0.0)
        aj = tl.load(src + BLOCK) if HAS_DECAY else log_w
        if CHECKED > 0:
            differs = _differs(src + BLOCK + 1, own_tail, CHECKED)
            bad = tl.maximum(bad, differs)
            if WATCH:  # the slot holds the checked values only: the sender's rank is j
                noted = (differs > 0) & (tile == 0)
                _note(watch, j, P, src + BLOCK + 1, own_tail, noted, CHECKED, HEAD)
                tl.store(watch + j * (HEAD + 1) + 1 + RANK_AT, j.to(tl.float32), mask=noted)
        acc, log_w = _add_crossed(acc, log_w, xj, aj, HAS_DECAY)
        tl.debug_barrier()  # every thread has read the slot
        tl.atomic_xchg(flag, 0, sem="release", scope="sys")
    if CHECKED > 0:
        acc = tl.where(bad > 0, float("nan"), acc)
        own = tl.where(bad > 0, float("nan"), own)
    _store_ends(acc, own, own_a, d_final, late, end, at, mask, HAS_DECAY, HAS_FINAL)


def tiles(B: int, H: int, D: int, E: int) -> int:
    """Tiles (and flags per source rank) of one [B, H, D, E] state: what the buffers are sized by."""
    return triton.cdiv(D * E, BLOCK) * B * H


def exchange(x, a, d_final, rank: int, P: int, forward: bool, bufs, spin: int = 1 << 30, own_tail=None,
             checked: int = 0, watch=None):
    """(late, end) of gathered.py's docstring, the states coming straight from the other ranks' pushes.

    Args:
        x: this rank's state (forward) or state gradient (backward), [B, H, D, E] float32.
        a: this rank's slice log-decay [B, H] float32, or None without decay.
        d_final: backward only, the gradient of the final state or None.
        bufs: this rank's `slots` [P * tiles * SLOT] float32 and `flags` [P * tiles] int32 (zeros
            at first), `peer_slots` / `peer_flags` (int64 addresses of every rank's, as mapped
            here) and `status` [1] int32: distributed/peer.py builds them.
        spin: polls of one flag before giving up: on the order of ten minutes on a GPU (NCCL's
            watchdog waits ten minutes by default), so a rank busy elsewhere for a while (a
            checkpoint save) is waited for, and a dead one still ends in an error.
        own_tail, checked: this rank's header (float32) and how many of its first values every
            sender's must equal (at most 30: they ride in the slot's padding), or the results are NaN.
        watch: Watch.rows (distributed/watch.py), where a differing header is also written.
    """
    B, H, D, E = x.shape
    x = x.contiguous()
    late, end = torch.empty_like(x), torch.empty_like(x)
    launch(
        _peer_kernel, (triton.cdiv(D * E, BLOCK), B * H),
        x, x if a is None else a.contiguous(), late if d_final is None else d_final.contiguous(), late, end,
        bufs.slots, bufs.peer_slots, bufs.flags, bufs.peer_flags, bufs.status, x if own_tail is None else own_tail,
        x if watch is None else watch, rank, P, D * E, tiles(B, H, D, E), spin, FORWARD=forward,
        HAS_DECAY=a is not None, HAS_FINAL=d_final is not None, BLOCK=BLOCK, SLOT=SLOT, TRAP=not INTERPRET,
        CHECKED=0 if own_tail is None else checked, WATCH=watch is not None and own_tail is not None,
        HEAD=header.SIZE, RANK_AT=header.RANK_AT, num_warps=4,
    )  # fmt: skip
    if INTERPRET and bool(bufs.status.item()):  # the interpreter runs synchronously: say it at once
        raise RuntimeError(f"peer exchange: rank {rank} of {P} waited too long for another rank's state")
    return late, end
