"""Family 2: quadratic forms with a decay mask gamma^(i-j): pow, exp, log-space cumsum, buffers."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tests.corpus.common import Projections


class RetNetPow(nn.Module):
    """RetNet retention: fixed per-head gamma as a buffer, mask = gamma ** (i - j) below the diagonal."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)
        self.register_buffer("gamma", 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float32)))

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        i = torch.arange(t, device=x.device, dtype=x.dtype)
        dist = i[:, None] - i[None, :]
        mask = torch.where(dist >= 0, self.gamma.to(x.dtype)[:, None, None] ** dist.clamp(min=0), 0.0)
        s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 * mask
        return self.p.merge((s @ v).transpose(1, 2))


class LearnableExpDecay(nn.Module):
    """Learnable per-head decay: log-decay = -softplus(a); mask = exp(where(causal, (i-j) * ld, -inf))."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)
        self.a = nn.Parameter(torch.linspace(-3.0, 0.0, heads))

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        ld = -F.softplus(self.a).view(1, -1, 1, 1)
        i = torch.arange(t, device=x.device)
        diff = (i.view(-1, 1) - i.view(1, -1)).to(x.dtype)
        mask = torch.exp(torch.where(diff >= 0, diff * ld, float("-inf")))
        return self.p.merge(torch.matmul(torch.matmul(q, k.transpose(-2, -1)) * mask, v).transpose(1, 2))


class GateLogCumsum(nn.Module):
    """Data-dependent gate (simple GLA): per-token log-sigmoid decay, G = cumsum, exp(G_i - G_j)."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)
        self.gate = nn.Linear(dim, heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        g = F.logsigmoid(self.gate(x)).transpose(1, 2)  # [B, H, T]
        G = g.cumsum(-1)
        t = x.shape[1]
        causal = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
        decay = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()
        s = torch.einsum("bhid,bhjd->bhij", q, k) * decay / math.sqrt(q.shape[-1])
        return self.p.merge(torch.einsum("bhij,bhjd->bihd", s, v))


class DecayMaskBuffer(nn.Module):
    """Lightning / TransNormer style: the whole decay mask precomputed once as a buffer [H, L, L]."""

    def __init__(self, dim=32, heads=4, max_len=64):
        super().__init__()
        self.p = Projections(dim, heads)
        slopes = torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)])
        i = torch.arange(max_len, dtype=torch.float32)
        diff = i[:, None] - i[None, :]
        mask = torch.exp(-slopes[:, None, None] * diff.clamp(min=0)) * (diff >= 0)
        self.register_buffer("decay", mask, persistent=False)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        s = torch.matmul(q, k.transpose(-1, -2)) * self.decay[:, :t, :t].to(x.dtype)
        return self.p.merge(torch.matmul(s, v).transpose(1, 2))
