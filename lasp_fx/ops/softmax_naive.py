"""The explicit reference of `tail_softmax_attention`: s x K scores in one piece (tests and GPU checks only)."""

from __future__ import annotations

import torch
from torch import Tensor


def tail_softmax_reference(q: Tensor, k: Tensor, v: Tensor, scale: float, docs: Tensor | None = None,
                           keep: Tensor | None = None) -> Tensor:
    """Causal softmax attention of q [N, H, s, D] at positions K - s .. K - 1 over k, v [N, Hk, K, D | E].

    kv head j serves query heads j * H / Hk ..; with document ids [N, K] a query sees the earlier
    keys of its own id; keys whose `keep` [N, K] is False are seen by nobody; a row that sees
    nothing is 0.
    """
    s, K = q.shape[2], k.shape[2]
    k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    seen = (torch.arange(K, device=q.device)[None, :] <= torch.arange(K - s, K, device=q.device)[:, None])[None, None]
    if docs is not None:
        seen = seen & (docs[:, K - s:, None] == docs[:, None, :])[:, None]
    if keep is not None:
        seen = seen & keep[:, None, None, :]
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    p = torch.softmax(scores.masked_fill(~seen, float("-inf")), -1).nan_to_num(0.0)
    return torch.matmul(p, v)
