"""Families 3 and 4: running sums of k v^T, and forms normalised by q . sum(k) or by row sums."""

import torch
import torch.nn.functional as F
from torch import nn

from tests.corpus.common import Projections, elu1


class CumsumOuterMul(nn.Module):
    """The state form written with broadcasting: cumsum of k[..., None] * v[..., None, :], then (q * S).sum."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = self.p.split(x)  # heads in dim 2: [B, T, H, D]
        q, k = F.silu(q), F.silu(k)
        S = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=1)  # [B, T, H, D, E]
        o = (q.unsqueeze(-1) * S).sum(dim=-2) * 0.25
        return self.p.merge(o)


class CumsumEinsumNormalised(nn.Module):
    """Katharopoulos et al.: elu+1 features, einsum outer product, normalised by q . cumsum(k) + eps."""

    def __init__(self, dim=32, heads=4, eps=1e-5):
        super().__init__()
        self.p, self.eps = Projections(dim, heads), eps

    def forward(self, x):
        q, k, v = (elu1(t).transpose(1, 2) if i < 2 else t.transpose(1, 2) for i, t in enumerate(self.p.split(x)))
        kv = torch.einsum("bhtd,bhte->bhtde", k, v).cumsum(dim=2)
        num = torch.einsum("bhtd,bhtde->bhte", q, kv)
        den = (q * k.cumsum(dim=2)).sum(-1, keepdim=True) + self.eps
        return self.p.merge((num / den).transpose(1, 2))


class RowSumNormalised(nn.Module):
    """The same attention in its quadratic form: masked scores divided by their row sums."""

    def __init__(self, dim=32, heads=4, eps=1e-6):
        super().__init__()
        self.p, self.eps = Projections(dim, heads), eps

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        a = (elu1(q) @ elu1(k).transpose(-1, -2)).masked_fill(
            torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1), 0.0)
        a = a / (a.sum(dim=-1, keepdim=True) + self.eps)
        return self.p.merge((a @ v).transpose(1, 2))
