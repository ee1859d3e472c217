"""`tail_softmax_attention`: causal softmax attention of s queries at the tail of K keys, tile by tile.

The softmax layers of a hybrid under sequence parallelism: rank r's s queries over the keys of
ranks 0..r. The tiles of `softmax_plan` (each at most s x s) run through the fused kernels of
`softmax_tile` and are merged by their log-sum-exp; the backward gives each tile its share from
the merged output and log-sum-exp. So memory is linear in K: no s x K scores or mask exist.

Registered as custom ops with their own autograd (`ops.custom_op.TwinOp`: opaque to dynamo,
AOTAutograd and Inductor, so the plan may read the ids and flags; an autograd.Function when eager):
    torch.ops.lasp_fx.tail_softmax_attention(q, k, v, docs?, keep?, scale, max_tiles) -> (out, lse)
    torch.ops.lasp_fx.tail_softmax_attention_backward(do, q, k, v, out, lse, docs?, keep?, scale, max_tiles)
        -> (dq, dk, dv)
"""

# No `from __future__ import annotations`: torch.library reads the annotations to infer schemas.
from typing import Optional

import torch
from torch import Tensor

from lasp_fx.ops import softmax_tile as tiles
from lasp_fx.ops.custom_op import TwinOp
from lasp_fx.ops.softmax_plan import MAX_TILES, keys_shared, plan, tile_mask


def tail_softmax_attention(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None,
                           docs: Optional[Tensor] = None, keep: Optional[Tensor] = None,
                           max_tiles: int = MAX_TILES) -> Tensor:
    """Causal softmax attention of q [N, H, s, D] at positions K - s .. K - 1 over k, v [N, Hk, K, D | E].

    Hk divides H (GQA / MQA: kv head j serves query heads j * H / Hk ..). `docs` [N, K]: integer ids
    of the keys' positions (the queries' are the last s): a query sees only the earlier keys of its
    own id. `keep` [N, K] booleans: False keys (padding) are seen by nobody. A query that sees no
    key gets 0. `scale` defaults to 1 / sqrt(D).
    """
    _check(q, k, v, docs, keep)
    out, _ = _op(q, k, v, docs, keep, tiles.default_scale(q, scale), max_tiles)
    return out


def _check(q, k, v, docs, keep):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"tail_softmax_attention takes [N, H, s, D] tensors, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    N, H, s, D = q.shape
    if k.shape[0] != N or v.shape[0] != N or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2] or k.shape[3] != D:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit together: k and v "
                         "need q's batch, one head count and length, and k q's head size")
    if H % k.shape[1]:
        raise ValueError(f"{H} query heads cannot share {k.shape[1]} key/value heads: the kv heads must divide them")
    if k.shape[2] < s:
        raise ValueError(f"{s} queries at the tail of {k.shape[2]} keys: there must be at least as many keys")
    K = k.shape[2]
    if docs is not None and (tuple(docs.shape) != (N, K) or docs.is_floating_point() or docs.is_complex()
                             or docs.dtype == torch.bool):
        raise ValueError(f"docs must be integer ids of the keys' positions, shape {(N, K)}, "
                         f"got {docs.dtype} {tuple(docs.shape)}")
    if keep is not None and (tuple(keep.shape) != (N, K) or keep.dtype != torch.bool):
        raise ValueError(f"keep must be booleans of the keys' positions, shape {(N, K)}, "
                         f"got {keep.dtype} {tuple(keep.shape)}")


def _rows_contiguous(*xs):
    """The kernels need unit stride along the head size only: a narrowed or transposed input is used
    as it is (copying the gathered keys would cost O(T d) per layer)."""
    return [x if x.stride(-1) == 1 else x.contiguous() for x in xs]


def _slices(t):
    rows, qs, ks = slice(t.b0, t.b1), slice(t.q0, t.q1), slice(t.k0, t.k1)
    return (rows, slice(None), qs), (rows, slice(None), ks)


def _forward(q: Tensor, k: Tensor, v: Tensor, docs: Optional[Tensor], keep: Optional[Tensor], scale: float,
             max_tiles: int) -> tuple[Tensor, Tensor]:
    q, k, v = _rows_contiguous(q, k, v)
    N, H, s, _ = q.shape
    acc = tiles.acc_dtype(q.dtype)
    out = q.new_zeros(N, H, s, v.shape[-1], dtype=acc)
    lse = q.new_full((N, H, s), float("-inf"), dtype=acc)
    for t in plan(N, s, k.shape[2], docs, keep, max_tiles):
        qi, ki = _slices(t)
        mask = tile_mask(t, docs, keep, k.shape[2], s) if t.masked else None
        o_t, lse_t = tiles.forward(q[qi], k[ki], v[ki], scale, t.causal, mask)
        tiles.merge(out[qi], lse[qi], o_t, lse_t)
    return out.to(q.dtype), lse


def _gradients(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, docs: Optional[Tensor],
               keep: Optional[Tensor], scale: float, max_tiles: int) -> tuple[Tensor, Tensor, Tensor]:
    do, q, k, v, out = _rows_contiguous(do, q, k, v, out)
    acc = tiles.acc_dtype(q.dtype)
    todo = plan(q.shape[0], q.shape[2], k.shape[2], docs, keep, max_tiles)
    # every query row meets several tiles; a key usually one (then its gradient is written once, in k's dtype)
    key_acc = acc if keys_shared(todo) else k.dtype
    dq = torch.zeros_like(q, dtype=acc)
    dk, dv = torch.zeros_like(k, dtype=key_acc), torch.zeros_like(v, dtype=key_acc)
    for t in todo:
        qi, ki = _slices(t)
        mask = tile_mask(t, docs, keep, k.shape[2], q.shape[2]) if t.masked else None
        dq_t, dk_t, dv_t = tiles.backward(do[qi], q[qi], k[ki], v[ki], out[qi], lse[qi], scale, t.causal, mask)
        dq[qi] += dq_t
        dk[ki] += dk_t
        dv[ki] += dv_t
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _forward_fake(q, k, v, docs, keep, scale, max_tiles):
    N, H, s, _ = q.shape
    return q.new_empty(N, H, s, v.shape[-1]), q.new_empty(N, H, s, dtype=tiles.acc_dtype(q.dtype))


def _gradients_fake(do, q, k, v, out, lse, docs, keep, scale, max_tiles):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, docs, keep, scale, max_tiles = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, docs, keep)
    ctx.scale, ctx.max_tiles = scale, max_tiles


def _backward(ctx, do, _d_lse, gradients):
    q, k, v, out, lse, docs, keep = ctx.saved_tensors
    dq, dk, dv = gradients(do, q, k, v, out, lse, docs, keep, ctx.scale, ctx.max_tiles)
    return dq, dk, dv, None, None, None, None


_op = TwinOp("tail_softmax_attention", forward=_forward, forward_fake=_forward_fake, gradients=_gradients,
             gradients_fake=_gradients_fake, setup_context=_setup_context, backward=_backward)
