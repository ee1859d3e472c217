"""Mixture-of-experts blocks that permute the tokens of a rank (importable by spawned ranks).

Each is a tiny LM around one routed block: embedding, block (residual), head, mean cross-entropy.
`route` is how the block is written: the exact forms sort the (token, expert) pairs, work on them
in that order and put them back (position-wise as a whole); the others break that, each in one
way, and must be refused at the line that does it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, EXPERTS, TOP_K = 32, 16, 4, 2


class MoELM(nn.Module):
    def __init__(self, route: str = "argsort_copy"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.router = nn.Linear(DIM, EXPERTS, bias=False)
        self.w = nn.Parameter(torch.randn(EXPERTS, DIM, DIM) * DIM**-0.5)
        self.head = nn.Linear(DIM, VOCAB)
        self.route = getattr(self, "_" + route)

    def forward(self, ids, labels=None):
        x = self.embed(ids)
        b, t, c = x.shape
        flat = x.reshape(-1, c)
        weights, experts = torch.topk(self.router(flat).softmax(-1), TOP_K, dim=-1)  # [N, k]
        y = self.route(flat, weights.reshape(-1), experts.reshape(-1))  # [N * k, C], pairs in token order
        x = x + y.view(b * t, TOP_K, c).sum(1).view(b, t, c)
        logits = self.head(x)
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    def _expert(self, rows, experts_of_rows):
        """Each row times its own expert's matrix (a per-row lookup, then a batched product)."""
        return torch.bmm(rows.unsqueeze(1), self.w[experts_of_rows]).squeeze(1)

    # ---------------------------------------------------------------- exact: permuted and put back
    def _argsort_copy(self, flat, weights, experts):
        order = experts.argsort()
        rows = flat.index_select(0, order // TOP_K)
        y = self._expert(rows, experts[order]) * weights[order, None]
        return torch.zeros_like(y).index_copy(0, order, y)  # out[order[i]] = y[i]

    def _sort_put(self, flat, weights, experts):
        sorted_experts, perm = torch.sort(experts, stable=True)
        y = self._expert(flat[perm // TOP_K], sorted_experts) * weights[perm].unsqueeze(-1)
        out = torch.empty_like(y)
        out[perm] = y
        return out

    def _sort_inverse_gather(self, flat, weights, experts):  # the HF grouped_mm form, with bmm for grouped_mm
        sorted_experts, perm = torch.sort(experts)
        y = self._expert(flat[perm // TOP_K], sorted_experts) * weights[perm].unsqueeze(-1)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.size(0), device=perm.device)
        return y[inv]

    # ---------------------------------------------------------------- refused
    def _capacity(self, flat, weights, experts):
        """Drops pairs beyond each expert's capacity: which pairs drop depends on the other tokens."""
        sorted_experts, perm = torch.sort(experts)
        slot = torch.cumsum(F.one_hot(sorted_experts, EXPERTS), dim=0)  # rank of each pair in its expert
        keep = (slot.gather(1, sorted_experts[:, None]).squeeze(1) <= 4).to(flat.dtype)
        y = self._expert(flat[perm // TOP_K], sorted_experts) * (weights[perm] * keep).unsqueeze(-1)
        return torch.zeros_like(y).index_copy(0, perm, y)

    def _not_put_back(self, flat, weights, experts):
        """Returns the pairs in sorted order: row i is some other token's."""
        sorted_experts, perm = torch.sort(experts)
        return self._expert(flat[perm // TOP_K], sorted_experts) * weights.unsqueeze(-1)

    def _positions_as_values(self, flat, weights, experts):
        """Uses where a pair sorted to as a feature: a position, local on a rank."""
        sorted_experts, perm = torch.sort(experts)
        y = self._expert(flat[perm // TOP_K], sorted_experts) * perm.to(flat.dtype).unsqueeze(-1)
        return torch.zeros_like(y).index_copy(0, perm, y)

    def _histc_drops_keys(self, flat, weights, experts):
        """Counts pairs per expert from 1 on: expert 0's pairs drop out and shift every group."""
        sorted_experts, perm = torch.sort(experts)
        offsets = torch.cumsum(torch.histc(sorted_experts.to(flat.dtype), bins=EXPERTS - 1, min=1, max=EXPERTS - 1), 0)
        group = torch.searchsorted(offsets, torch.arange(perm.size(0), device=perm.device).to(flat.dtype), right=True)
        y = self._expert(flat[perm // TOP_K], group.clamp(max=EXPERTS - 1))
        return torch.zeros_like(y).index_copy(0, perm, y)
