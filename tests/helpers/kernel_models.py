"""Models that call known kernels directly (fla's chunk ops, the original lasp package), for family 7.

`reference=True` swaps each kernel for the package's own PyTorch reference (fla's naive_*),
which runs on CPU: that is the function the traced substitute must compute.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn


class _KernelLM(nn.Module):
    packages = ("fla",)

    def __init__(self, vocab=32, dim=16, heads=2, reference=False):
        super().__init__()
        for package in self.packages:  # imported when built, as user code imports at the top
            importlib.import_module(package)
        self.h, self.reference = heads, reference
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.gate = nn.Linear(dim, heads)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids, labels=None):
        x = self.embed(ids)
        q, k, v = self.qkv(x).view(*x.shape[:2], 3, self.h, -1).unbind(2)
        x = x + self.mix(q, k, v, x).flatten(2)
        logits = self.head(x)
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class FlaSimpleGLA(_KernelLM):
    """fla.ops.simple_gla.chunk_simple_gla with a data-dependent gate."""

    def mix(self, q, k, v, x):
        g = F.logsigmoid(self.gate(x))
        if self.reference:
            from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

            return naive_recurrent_simple_gla(q, k, v, g)[0].to(q.dtype)
        from fla.ops.simple_gla import chunk_simple_gla

        return chunk_simple_gla(q, k, v, g=g)[0]


class FlaRetention(_KernelLM):
    """fla.ops.retention.chunk_retention (RetNet's fixed per-head decays)."""

    def mix(self, q, k, v, x):
        if self.reference:
            from fla.ops.retention.naive import naive_retention

            return naive_retention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2).to(q.dtype)
        from fla.ops.retention import chunk_retention

        return chunk_retention(q, k, v)[0]


class FlaLinearAttn(_KernelLM):
    """fla.ops.linear_attn.chunk_linear_attn, normalised (its default), with elu+1 features."""

    def mix(self, q, k, v, x):
        q, k = F.elu(q) + 1, F.elu(k) + 1
        if self.reference:
            from fla.ops.linear_attn.naive import naive_recurrent_linear_attn

            return naive_recurrent_linear_attn(q, k, v, normalize=True)[0].to(q.dtype)
        from fla.ops.linear_attn import chunk_linear_attn

        return chunk_linear_attn(q, k, v)[0]


class LaspLightning(_KernelLM):
    """The original lasp package's lightning_attn ([B, H, T, D], decay exp(-slope) per head, no scale)."""

    packages = ("lasp",)

    def mix(self, q, k, v, x):
        slopes = torch.tensor([0.5, 0.125], dtype=q.dtype, device=q.device).view(self.h, 1, 1)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if self.reference:  # the kernel's definition: o_i = sum_{j<=i} exp(-s (i - j)) (q_i . k_j) v_j
            i = torch.arange(q.shape[2], device=q.device)
            dist = (i[:, None] - i[None, :]).to(q.dtype)
            mask = torch.exp(-slopes * dist.clamp(min=0)) * (dist >= 0)
            return ((q @ k.transpose(-1, -2)) * mask @ v).transpose(1, 2)
        from lasp import lightning_attn

        return lightning_attn(q, k, v, slopes).transpose(1, 2)
