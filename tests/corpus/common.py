"""Projections shared by the corpus models (the attention itself is written out in each model)."""

import torch
from torch import nn


class Projections(nn.Module):
    """x [B, T, C] -> q, k, v [B, T, H, D] from one fused linear, plus the output projection."""

    def __init__(self, dim=32, heads=4, kv_heads=None):
        super().__init__()
        self.h, self.hk, self.d = heads, kv_heads or heads, dim // heads
        self.qkv = nn.Linear(dim, (self.h + 2 * self.hk) * self.d, bias=False)
        self.out = nn.Linear(self.h * self.d, dim, bias=False)

    def split(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.h * self.d, self.hk * self.d, self.hk * self.d], dim=-1)
        return q.view(b, t, self.h, self.d), k.view(b, t, self.hk, self.d), v.view(b, t, self.hk, self.d)

    def merge(self, o):  # o [B, T, H, D]
        return self.out(o.reshape(*o.shape[:2], -1))


def elu1(x):
    return torch.nn.functional.elu(x) + 1
