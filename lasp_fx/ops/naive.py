"""Reference implementations of causal linear attention: token recurrence and quadratic form (docs/design.md §2).

Plain autograd code, slow, and there to be trusted: every faster path (the chunked PyTorch
path, the Triton kernels, LASP across ranks) is tested against them in float64. With packed
documents (`runs`, ops/documents.py) every term between tokens of different documents is absent:
the state resets at each start.
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_kv_heads(x: Tensor, num_heads: int) -> Tensor:
    """Repeat kv heads [B, T, H_kv, *] to query heads [B, T, H, *] (references may copy)."""
    groups = num_heads // x.shape[2]
    return x.repeat_interleave(groups, dim=2) if groups > 1 else x


def per_token_log_decay(log_decay: Tensor | None, q: Tensor) -> Tensor:
    """The log-decay as a [B, T, H] tensor (zeros for None, broadcast for a per-head [H])."""
    B, T, H, _ = q.shape
    if log_decay is None:
        return q.new_zeros(B, T, H)
    if log_decay.dim() == 1:
        return log_decay.to(q.dtype).expand(B, T, H)
    return log_decay.to(q.dtype)


def recurrent_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, *, scale: float | None = None,
    initial_state: Tensor | None = None,
    runs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence S_t = exp(a_t) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t.

    With `runs` [B, T + 1] (packed documents) S_{t-1} is dropped where token t starts a document.
    Returns (o [B, T, H, E], final state [B, H, D, E]) in the dtype of q.
    """
    B, T, H, D = q.shape
    E = v.shape[-1]
    scale = D**-0.5 if scale is None else scale
    k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)
    a = per_token_log_decay(log_decay, q)
    S = q.new_zeros(B, H, D, E) if initial_state is None else initial_state.to(q.dtype)
    outs = []
    for t in range(T):
        carried = torch.exp(a[:, t])[..., None, None] * S
        if runs is not None:  # a reset: the state before a document's first token is not carried
            carried = torch.where((runs[:, t + 1] == runs[:, t])[:, None, None, None], carried, 0.0)
        S = carried + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(scale * torch.einsum("bhd,bhde->bhe", q[:, t], S))
    o = torch.stack(outs, dim=1) if outs else q.new_zeros(B, 0, H, E)
    return o, S


def quadratic_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None, *, scale: float | None = None,
    initial_state: Tensor | None = None,
    runs: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The same function as a T x T masked matrix product (the "parallel form").

    With `runs` [B, T + 1] (packed documents) the mask also requires both tokens in one document.
    Returns (o [B, T, H, E], final state [B, H, D, E]) in the dtype of q.
    """
    B, T, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    k, v = expand_kv_heads(k, H), expand_kv_heads(v, H)
    G = torch.cumsum(per_token_log_decay(log_decay, q), dim=1)  # [B, T, H]
    Gh = G.transpose(1, 2)  # [B, H, T]
    diff = Gh[..., :, None] - Gh[..., None, :]  # G_i - G_j
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    same = causal if runs is None else causal & (runs[:, 1:, None] == runs[:, None, 1:])[:, None]
    decay = torch.exp(diff.masked_fill(~same, float("-inf")))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale * decay
    o = torch.einsum("bhij,bjhe->bihe", scores, v)
    G_T = Gh[..., -1:] if T > 0 else Gh.new_zeros(B, H, 1)
    w = torch.exp(G_T - Gh)  # [B, H, T]: exp(G_T - G_j)
    if runs is not None:  # only the last document's tokens are in the final state
        w = w * (runs[:, 1:] == runs[:, -1:])[:, None]
    S = torch.einsum("bhj,bjhd,bjhe->bhde", w, k, v)
    if initial_state is not None:
        S0 = initial_state.to(q.dtype)
        reach, through = torch.exp(G), torch.exp(G_T)  # [B, T, H], [B, H, 1]
        if runs is not None:  # the initial state reaches the first document only
            reach = reach * (runs[:, 1:] == runs[:, :1])[..., None]
            through = through * (runs[:, -1] == runs[:, 0])[:, None, None]
        o = o + scale * reach[..., None] * torch.einsum("bthd,bhde->bthe", q, S0)
        S = S + through[..., None] * S0
    return o, S
