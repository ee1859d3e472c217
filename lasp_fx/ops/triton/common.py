"""Shared pieces of the Triton kernels: chunk size, tile loads, decay loads, segments, autotune.

Work is cut in chunks of C tokens (the quadratic part, tensor-core tiles) and segments of
`nsub` chunks; states are stored only at segment boundaries, and a program carries its state in
registers inside a segment. Tiles are loaded as rows or straight as their transpose: no kernel
transposes a dot result (docs/design.md §2).

Packed documents (HAS_RUNS): the kernels read the runs index of ops/documents.py; where
documents start and what is done about it are packed.py's. Here: `chunk_mask` keeps pairs of
tokens within a document where asked, and a late state reaches only the segments before the
slice's first document start (`late_tile`). The decays stay the tokens' own: no -inf enters any
sum. Without documents the runs are compiled out.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

CHUNK = 64
LOG2E = tl.constexpr(1.4426950408889634)  # decays are applied as exp2(log2(e) * x): one MUFU op

# The interpreter cannot benchmark (no driver): keep one config there (docs/design.md §7).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _backport_interpreter_index_fix() -> None:
    """Let the interpreter use scalar arguments as loop bounds under numpy >= 2.4.

    Triton 3.6's interpreter turns a scalar into an int with int(1-element array), which numpy
    2.4 rejects ("only 0-dimensional arrays can be converted"); triton#9171, fixed upstream by
    triton#9172. Same one-line fix, applied only when the installed pair needs it.
    """
    import numpy as np
    from triton.runtime import interpreter

    try:
        int(np.zeros(1, dtype=np.int32))
        return  # numpy < 2.4
    except TypeError:
        pass
    original = interpreter._patch_lang_tensor
    if getattr(original, "_index_fixed", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._index_fixed = True
    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _backport_interpreter_index_fix()


def _pruner(packed_warps: int | None):
    def prune(configs, named_args, **kwargs):
        if packed_warps and kwargs.get("PACKED", named_args.get("PACKED")):
            configs = [c for c in configs if c.num_warps == packed_warps] or configs
        # LASP_FX_AUTOTUNE=0 takes the first config: no tuning runs, one compile per kernel.
        return configs[:1] if os.environ.get("LASP_FX_AUTOTUNE", "1") == "0" else configs

    return prune


def autotune(configs: list, key: list, packed_warps: int | None = None):
    """`triton.autotune` over a few configs, its choice cached on disk next to Triton's kernel cache.

    Only the first config under TRITON_INTERPRET=1 (the interpreter cannot benchmark) or with
    LASP_FX_AUTOTUNE=0: list first the config the tuner picks at common sizes. `packed_warps`: the launch of the
    packed loop (PACKED) takes only the configs of that many warps.
    """
    return triton.autotune(
        configs=configs[:1] if INTERPRET else configs,
        key=key,
        prune_configs_by={"early_config_prune": _pruner(packed_warps)},
        cache_results=True,
    )


def autotune_bv(key: list):
    """`autotune` of the kernels that tile value columns by BV (output, dv). Their packed loop (PACKED) takes 4
    warps only: at 8 warps with pipelining it computed wrong o and dv on the H100 (one config faulted) while every
    other kernel was right (records 2026-12-06_fourth, 2026-12-07_sixth); the launch of the segments that run the
    unpacked loop tunes over every config."""
    return autotune([config(4, BV=64), config(8, BV=64), config(8, BV=128)], key, packed_warps=4)


def config(num_warps: int, num_stages: int = 2, **meta) -> triton.Config:
    return triton.Config(meta, num_warps=num_warps, num_stages=num_stages)


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs get exact fp32 products (no tf32); 16-bit inputs use the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def block(n: int) -> int:
    """Power-of-two tile covering n (at least 16: the GPU's tl.dot minimum)."""
    return max(16, triton.next_power_of_2(n))


def decay_mode(g: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
    """0: no decay, 1: one log-decay per head [H], 2: one per token [B, T, H]; g as float32."""
    if g is None:
        return 0, None
    return (1 if g.dim() == 1 else 2), g.float().contiguous()


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def segment_chunks(n_chunks: int, bh: int, device: torch.device) -> int:
    """Chunks per segment: the power of two (1 to 32) nearest to one segment-head per SM.

    Fewer, longer segments win until the GPU runs short of programs: each program starts by
    loading its D x E state and then walks its chunks in order (bench/segments.py measures it;
    records: bench/records/2026-11-28_launch).
    """
    sms = _sm_count(device.index or 0) if device.type == "cuda" else 4
    per_sm = max(1.0, n_chunks * bh / sms)
    return 1 << min(5, round(math.log2(per_sm)))


# Segments of the forward's states that the backward reuses instead of recomputing them (one
# state pass less). The saved
# tensor's shape must follow from the sizes alone (it is a custom-op output whose fake knows
# neither the GPU nor a dynamic T's value), so it is cut at a fixed 32 chunks: the segment
# `segment_chunks` picks from ~16K tokens per head up on a 132-SM GPU. Where it picks another,
# the saved tensor is left empty and the backward runs its state pass.
SAVED_CHUNKS = 32
# LASP_FX_SAVE_STATES=0: the backward runs its state pass as before (A/B timing, or to rule the reuse out).
SAVE_STATES = os.environ.get("LASP_FX_SAVE_STATES", "1") != "0"


def saved_shape(q: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, kv_heads: int) -> tuple:
    """Shape of the states `fwd(save=True)` returns: [B, state heads, n_segments - 1, D, E].

    Segment 0's entering state is zero and has no row (states.py), so up to 2048 tokens this is
    empty: short slices, whose segments are shorter, hold no memory for states they cannot reuse.
    """
    B, T, H, D = q.shape
    heads = kv_heads if g is None else H  # without decay the query heads of one kv head share every state
    return (B, heads, (T - 1) // (CHUNK * SAVED_CHUNKS), D, v.shape[-1])


@triton.jit
def load_rows(base, t, valid, stride_t, rf, F):
    """Tile [C, BF] of a [T, stride_t]-strided tensor: rows are tokens t, columns features rf."""
    ptr = base + t[:, None].to(tl.int64) * stride_t + rf[None, :]
    return tl.load(ptr, mask=valid[:, None] & (rf[None, :] < F), other=0.0)


@triton.jit
def load_cols(base, t, valid, stride_t, rf, F):
    """The transposed tile [BF, C]: features down, tokens across (read as such, never tl.trans)."""
    ptr = base + t[None, :].to(tl.int64) * stride_t + rf[:, None]
    return tl.load(ptr, mask=valid[None, :] & (rf[:, None] < F), other=0.0)


@triton.jit
def head_base(x, i_b, T, heads, head, F):
    """Pointer to token 0 of `head` in batch i_b of a [B, T, heads, F] tensor (64-bit offsets)."""
    return x + (i_b.to(tl.int64) * T * heads + head) * F


@triton.jit
def program_tiles(q, k, T, H, HK, D, C: tl.constexpr, B_TILED: tl.constexpr, B_WHOLE: tl.constexpr):
    """Where a program of the output and gradient kernels works, on their grid (feature tile,
    segment, batch row x query head): (segment, batch x head, batch row, query head, the key head
    it reads (H // HK query heads share one), the feature range of its tile, the whole other
    feature range, a chunk's positions, and the bases of its heads in q and k)."""
    i_s, i_bh = tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    hk = i_h // (H // HK)
    r_tiled = tl.program_id(0) * B_TILED + tl.arange(0, B_TILED)
    r_whole = tl.arange(0, B_WHOLE)
    q_base, k_base = head_base(q, i_b, T, H, i_h, D), head_base(k, i_b, T, HK, hk, D)
    return i_s, i_bh, i_b, i_h, hk, r_tiled, r_whole, tl.arange(0, C), q_base, k_base


@triton.jit
def chunk_decay(g, i_b, i_h, t, valid, T, H, G_MODE: tl.constexpr):
    """log2-decays of a chunk's tokens (0 past the end of the sequence): their running sum b [C]
    from the chunk's start, and the chunk's total a."""
    if G_MODE == 1:
        gv = tl.where(valid, tl.load(g + i_h) * LOG2E, 0.0)
    else:
        gv = tl.load(g + (i_b.to(tl.int64) * T + t) * H + i_h, mask=valid, other=0.0) * LOG2E
    return tl.cumsum(gv, 0), tl.sum(gv, 0)


@triton.jit
def chunk_tokens(t0, T, C: tl.constexpr):
    """The chunk starting at t0: its tokens t [C] and which of them are before T."""
    t = t0 + tl.arange(0, C)
    return t, t < T


@triton.jit
def chunk_mask(bc, rc, G_MODE: tl.constexpr, TRANSPOSED: tl.constexpr, lo, HAS_RUNS: tl.constexpr):
    """M[i, j] = exp(b_i - b_j) for i >= j, else 0 (b: in-chunk log2 cumsum; 0/1 without decay),
    and with HAS_RUNS 0 unless j >= lo_i, the first token of i's document in the chunk (packed.doc_starts).

    TRANSPOSED gives M^T (rows j, columns i), built directly rather than by tl.trans.
    """
    if TRANSPOSED:
        causal = rc[None, :] >= rc[:, None]
        diff = bc[None, :] - bc[:, None]
        if HAS_RUNS:
            causal = causal & (rc[:, None] >= lo[None, :])
    else:
        causal = rc[:, None] >= rc[None, :]
        diff = bc[:, None] - bc[None, :]
        if HAS_RUNS:
            causal = causal & (rc[None, :] >= lo[:, None])
    if G_MODE == 0:
        m = tl.where(causal, 1.0, 0.0)
    else:
        m = tl.exp2(tl.where(causal, diff, float("-inf")))
    return m


def backward_split(g_mode: int, decay_grad: bool, dtype: torch.dtype) -> bool:
    """Whether dq / dk take the float32 state at ~2^-16 in their products through it (dot_f32b):
    for a decay gradient from 16-bit inputs (fp32 inputs take exact products)."""
    return g_mode != 0 and decay_grad and dtype != torch.float32


@triton.jit
def dot_f32b(a, b, SPLIT: tl.constexpr, PREC: tl.constexpr):
    """a @ b for a 16-bit `a` and a float32 `b` on the tensor cores.

    SPLIT adds the product of b's rounding remainder (b - b_hi): two 16-bit products carry b to
    ~2^-16 instead of ~2^-8. The decay gradient needs it where a state meets it (backward.py).
    """
    hi = b.to(a.dtype)
    out = tl.dot(a, hi, input_precision=PREC)
    if SPLIT:
        out += tl.dot(a, (b - hi.to(tl.float32)).to(a.dtype), input_precision=PREC)
    return out


@triton.jit
def late_state(
    s_ptr, late, A, i_bh, i_s, rows, cols, D, E, NSEG, runs, i_b, T, L,
    G_MODE: tl.constexpr, HAS_LATE: tl.constexpr, REVERSE: tl.constexpr, NSEG_P2: tl.constexpr,
    HAS_RUNS: tl.constexpr,
):  # fmt: skip
    """A segment's [D, E] float32 state tile (rows index D, cols E, either may be the broadcast
    dim: a transposed tile is read as such), plus with HAS_LATE a late state [B*H, D, E] decayed
    to this segment: by the log2-decays A [B*H, NSEG] of the segments before it (REVERSE: after
    it), summed here from one vector load, so no host-side prefix sums are launched.

    Forward-direction states (not REVERSE) have no row for segment 0, whose entering state is zero
    (states.py): there `s_ptr` points one row before the buffer and nothing is loaded. With
    HAS_RUNS the late state stops at the slice's first document start (REVERSE: its last), for
    segments of L tokens."""
    mask = (rows < D) & (cols < E)
    if not REVERSE:
        mask = mask & (i_s > 0)
    offs = rows * E + cols
    st = tl.load(s_ptr + offs, mask=mask, other=0.0)
    if HAS_LATE:
        st += late_tile(late, A, i_bh, i_s, rows, cols, D, E, NSEG, runs, i_b, T, L, G_MODE, REVERSE, NSEG_P2,
                        HAS_RUNS)
    return st


@triton.jit
def late_tile(
    late, A, i_bh, i_s, rows, cols, D, E, NSEG, runs, i_b, T, L,
    G_MODE: tl.constexpr, REVERSE: tl.constexpr, NSEG_P2: tl.constexpr, HAS_RUNS: tl.constexpr,
):  # fmt: skip
    """The late state's [D, E] tile of head i_bh, decayed to segment i_s (see late_state)."""
    offs = rows * E + cols
    extra = tl.load(late + i_bh.to(tl.int64) * D * E + offs, mask=(rows < D) & (cols < E), other=0.0)
    if G_MODE != 0:
        seg = tl.arange(0, NSEG_P2)
        between = (seg > i_s) & (seg < NSEG) if REVERSE else seg < i_s
        extra *= tl.exp2(tl.sum(tl.load(A + i_bh * NSEG + seg, mask=between, other=0.0), 0))
    if HAS_RUNS:  # no document starts between the slice's edge and this segment
        base = runs + i_b.to(tl.int64) * (T + 1)
        if REVERSE:
            hit = tl.load(base + tl.minimum((i_s + 1) * L, T)) == tl.load(base + T)
        else:
            hit = tl.load(base + i_s * L) == tl.load(base)
        extra = tl.where(hit, extra, 0.0)
    return extra
