"""Family 1: (q k^T masked causally) v, spelled with matmul, einsum, bmm, masks of several kinds."""

import math

import torch
from torch import nn

from tests.corpus.common import Projections, elu1


class MatmulMaskedFill(nn.Module):
    """Heads in dim 1, scale on the scores, mask kept as a boolean buffer."""

    def __init__(self, dim=32, heads=4, max_len=64):
        super().__init__()
        self.p = Projections(dim, heads)
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)))

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        s = (elu1(q) @ elu1(k).transpose(-2, -1)) / math.sqrt(q.shape[-1])
        s = s.masked_fill(~self.causal[:t, :t], 0.0)
        return self.p.merge((s @ v).transpose(1, 2))


class EinsumTril(nn.Module):
    """Heads in dim 2, einsum products, scale on q, torch.tril on the scores."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = self.p.split(x)
        q = torch.relu(q) * q.shape[-1] ** -0.5
        s = torch.tril(torch.einsum("bthd,bshd->bhts", q, torch.relu(k)))
        return self.p.merge(torch.einsum("bhts,bshd->bthd", s, v))


class BmmWhere(nn.Module):
    """Batch and heads merged for bmm, permute instead of transpose, torch.where, scale on k."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.p.split(x)
        h, d = q.shape[2], q.shape[3]
        q, k, v = (y.permute(0, 2, 1, 3).reshape(b * h, t, d) for y in (q, k, v))
        k = k * 0.5
        s = torch.bmm(q, k.permute(0, 2, 1))
        i = torch.arange(t, device=x.device)
        keep = i[:, None] >= i[None, :]
        s = torch.where(keep, s, torch.zeros_like(s))
        o = torch.bmm(s, v).view(b, h, t, d).permute(0, 2, 1, 3)
        return self.p.merge(o)


class FloatMaskDiv(nn.Module):
    """.mT for the transpose, a float 0/1 mask built per call from triu, scale by division."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        mask = (torch.triu(torch.ones(t, t, device=x.device), diagonal=1) == 0).to(x.dtype)
        s = torch.matmul(torch.sigmoid(q), torch.sigmoid(k).mT) / 2.0 * mask
        return self.p.merge(torch.matmul(s, v).transpose(1, 2))


class GQAExpand(nn.Module):
    """Grouped-query attention: 4 query heads share 2 kv heads, repeated by expand + reshape."""

    def __init__(self, dim=32, heads=4, kv_heads=2):
        super().__init__()
        self.p = Projections(dim, heads, kv_heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        b, hk, t, d = k.shape
        g = q.shape[1] // hk
        k = k[:, :, None].expand(b, hk, g, t, d).reshape(b, hk * g, t, d)
        v = v[:, :, None].expand(b, hk, g, t, d).reshape(b, hk * g, t, d)
        s = (elu1(q) @ elu1(k).transpose(2, 3)).tril()
        return self.p.merge((s @ v).transpose(1, 2))


class MQARepeatInterleave(nn.Module):
    """Multi-query attention: one kv head, repeated with repeat_interleave; scores scaled by 1/d."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads, kv_heads=1)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        k, v = (y.repeat_interleave(q.shape[1], dim=1) for y in (k, v))
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        s = (q @ k.transpose(-1, -2)).masked_fill(causal.logical_not(), 0) / q.shape[-1]
        return self.p.merge((s @ v).transpose(1, 2))
