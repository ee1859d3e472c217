"""One tile of softmax attention with its log-sum-exp, and the tile's share of the gradients.

A tile is queries q [N, H, L, D] against keys k, v [N, Hk, S, D | E] (Hk divides H: GQA / MQA),
fully visible, causal (L == S, the same positions: query i sees keys 0..i) or under a boolean
mask [N, 1, L, S]. `forward` returns the tile's output and log-sum-exp; tiles are merged by their
log-sum-exp (`merge`). `backward` takes the *merged* output and log-sum-exp (the flash-attention
backward only needs those to give each tile its exact share: P = exp(q k^T * scale - lse)), so
tiles never need each other's results in the backward.

torch's public SDPA does not return the log-sum-exp, so this calls the private ATen ops behind
it: the flash kernel (CUDA, fp16 / bf16, no mask), the memory-efficient kernel (CUDA, fp32 or a
mask), the CPU flash kernel (any float dtype, float mask), and an explicit PyTorch path elsewhere
(CUDA float64, value heads of another size than the keys' on the CPU, head sizes the kernels
refuse), which holds L x S scores: callers keep tiles small.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

aten = torch.ops.aten


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype tiles are merged and gradients summed in: float64 stays, the rest float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_for(q: Tensor, k: Tensor, v: Tensor, masked: bool) -> str:
    """"flash", "efficient", "cpu" or "math": the kernel a tile of these tensors runs on."""
    D, E = q.shape[-1], v.shape[-1]
    if q.device.type == "cpu":
        return "cpu" if D == E else "math"
    if q.device.type != "cuda":
        return "math"
    if not masked and q.dtype in (torch.float16, torch.bfloat16) and D == E and D % 8 == 0 and D <= 256:
        return "flash"
    # the memory-efficient kernel wants 16-byte aligned rows of q, k and v
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32) and (D * q.element_size()) % 16 == 0 \
            and (E * q.element_size()) % 16 == 0:
        return "efficient"
    return "math"


def _expand_heads(x: Tensor, heads: int) -> Tensor:
    """k or v with one head per query head (GQA / MQA: each kv head serves H / Hk query heads)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def _fold_heads(dx: Tensor, kv_heads: int) -> Tensor:
    """The gradient of `_expand_heads`: the query heads' shares summed back onto their kv head."""
    N, H, S, D = dx.shape
    return dx if H == kv_heads else dx.reshape(N, kv_heads, H // kv_heads, S, D).sum(2)


def _bias(mask: Tensor, dtype: torch.dtype, heads: int, aligned: bool) -> Tensor:
    """The boolean mask as an additive float bias (0 / -inf), expanded over the heads; with `aligned`
    its rows are padded to 16 entries as the memory-efficient kernel requires (as torch's SDPA does)."""
    N, _, L, S = mask.shape
    width = -(-S // 16) * 16 if aligned else S
    bias = torch.full((N, 1, L, width), float("-inf"), dtype=dtype, device=mask.device)
    bias[..., :S].masked_fill_(mask, 0.0)
    return bias[..., :S].expand(N, heads, L, S)


def forward(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, mask: Tensor | None = None):
    """(out [N, H, L, E] in q's dtype, lse [N, H, L] in `acc_dtype`) of one tile.

    Rows that see no key (a mask row of False only) get out = 0 and lse = -inf, so that merging
    gives them no weight.
    """
    H = q.shape[1]
    k, v = _expand_heads(k, H), _expand_heads(v, H)
    kernel = kernel_for(q, k, v, mask is not None)
    if kernel == "flash":
        out, lse = aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, scale=scale)[:2]
    elif kernel == "efficient":
        bias = None if mask is None else _bias(mask, q.dtype, H, aligned=True)
        out, lse = aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, causal, scale=scale)[:2]
        lse = lse[..., : q.shape[2]]  # the kernel pads it to a multiple of 32 rows
    elif kernel == "cpu":
        bias = None if mask is None else _bias(mask, q.dtype, 1, aligned=False)
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=bias, scale=scale)
    else:
        out, lse = _math_forward(q, k, v, scale, causal, mask)
    lse = lse.to(acc_dtype(q.dtype))
    if mask is not None:  # empty rows: the kernels give 0 (CPU) or NaN, never the -inf that merging needs
        seen = mask.any(-1)  # [N, 1, L]
        lse = lse.masked_fill(~seen, float("-inf"))
        out = out.masked_fill(~seen[..., None], 0.0)
    return out, lse


def backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, causal: bool,
             mask: Tensor | None = None):
    """(dq, dk, dv) of this tile, given the merged output `out` and log-sum-exp `lse` of its rows.

    Rows whose merged lse is -inf (they saw no key anywhere: padding) get no gradient.
    """
    H, Hk = q.shape[1], k.shape[1]
    ke, ve = _expand_heads(k, H), _expand_heads(v, H)
    kernel = kernel_for(q, ke, ve, mask is not None)
    if mask is not None:
        # A row that saw no key (padding) gets no gradient and gives none. It goes into the kernel as a row
        # that sees every key with q = 0, lse = 0 and dO = 0: P = 1, dP = 0, rowsum(dO * O) = 0, so dS = 0
        # and its dq and its shares of dk and dv are exactly 0 (no row of -inf bias with lse = -inf reaches a kernel).
        empty = ~mask.any(-1)  # [N, 1, L]
        mask = mask | empty[..., None]
        q = q.masked_fill(empty[..., None], 0.0)
        lse = lse.masked_fill(empty, 0.0)
        do = do.masked_fill(empty[..., None], 0.0)
    if kernel == "flash":
        L, S = q.shape[2], k.shape[2]
        unused = torch.empty((), dtype=torch.long)  # the dropout RNG state: dropout is 0
        dq, dk, dv = aten._scaled_dot_product_flash_attention_backward(
            do, q, ke, ve, out, lse.float().contiguous(), None, None, L, S, 0.0, causal, unused, unused, scale=scale)
    elif kernel == "efficient":
        low = q.dtype
        if mask is not None and low != torch.float32:
            # With a bias, the H100's memory-efficient backward in bf16 gives inf dq / dk on rows that are not
            # empty, where float32 on the same tiles and bias is right: masked half-precision tiles (the
            # fallback for rows of many short documents) take their backward in float32.
            do, q, ke, ve, out = (t.float() for t in (do, q, ke, ve, out))
        L = q.shape[2]
        padded = lse.new_zeros(*lse.shape[:2], -(-L // 32) * 32, dtype=torch.float32)
        padded[..., :L] = lse
        bias = None if mask is None else _bias(mask, q.dtype, H, aligned=True)
        unused = torch.empty((), dtype=torch.long, device=q.device)
        dq, dk, dv, _ = aten._scaled_dot_product_efficient_attention_backward(
            do, q, ke, ve, bias, out, padded, unused, unused, 0.0, [True, True, True, False], causal, scale=scale)
        dq, dk, dv = dq.to(low), dk.to(low), dv.to(low)
    elif kernel == "cpu":
        bias = None if mask is None else _bias(mask, q.dtype, 1, aligned=False)
        dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
            do, q, ke, ve, out, lse.to(acc_dtype(q.dtype)), 0.0, causal, attn_mask=bias, scale=scale)
    else:
        dq, dk, dv = _math_backward(do, q, ke, ve, out, lse, scale, causal, mask)
    return dq, _fold_heads(dk, Hk), _fold_heads(dv, Hk)


def merge(out: Tensor, lse: Tensor, tile_out: Tensor, tile_lse: Tensor) -> None:
    """Merge one tile into the running (out, lse) of the same rows, in place (both in `acc_dtype`).

    out = (out e^lse + tile_out e^tile_lse) / (e^lse + e^tile_lse); rows still at -inf on both
    sides stay (0, -inf).
    """
    new = torch.logaddexp(lse, tile_lse)
    finite = new.masked_fill(torch.isneginf(new), 0.0)
    out.mul_(torch.exp(lse - finite)[..., None]).add_(tile_out.to(out.dtype) * torch.exp(tile_lse - finite)[..., None])
    lse.copy_(new)


def _scores(q, k, scale, causal, mask):
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        L, S = s.shape[-2:]
        s = s.masked_fill(torch.ones(L, S, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s if mask is None else s.masked_fill(~mask, float("-inf"))


def _math_forward(q, k, v, scale, causal, mask):
    s = _scores(q.to(acc_dtype(q.dtype)), k.to(acc_dtype(q.dtype)), scale, causal, mask)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.masked_fill(torch.isneginf(lse), 0.0)[..., None])
    return torch.matmul(p, v.to(p.dtype)).to(q.dtype), lse


def _math_backward(do, q, k, v, out, lse, scale, causal, mask):
    acc = acc_dtype(q.dtype)
    q_, k_, v_, do_ = q.to(acc), k.to(acc), v.to(acc), do.to(acc)
    p = torch.exp(_scores(q_, k_, scale, causal, mask) - lse[..., None])
    dv = torch.matmul(p.transpose(-2, -1), do_)
    dp = torch.matmul(do_, v_.transpose(-2, -1))
    ds = p * (dp - (do_ * out.to(acc)).sum(-1, keepdim=True))
    dq = torch.matmul(ds, k_) * scale
    dk = torch.matmul(ds.transpose(-2, -1), q_) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def default_scale(q: Tensor, scale: float | None) -> float:
    """SDPA's default: 1 / sqrt(head size)."""
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)

