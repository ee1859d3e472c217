"""Gated linear attention: a short causal depthwise conv, then a data-dependent per-token decay."""

import torch
import torch.nn.functional as F
from torch import nn

from examples.models.common import LanguageModel, ModelConfig, packed_linear_attention


class ShortConv(nn.Module):
    """Causal depthwise conv1d over the sequence (kernel 4), as in Mamba / GLA / DeltaNet."""

    def __init__(self, dim, kernel_size=4):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=kernel_size - 1)

    def forward(self, x, position_ids=None):  # [b, n, c]
        b, n, c = x.shape
        if position_ids is None:
            return F.silu(self.conv(x.transpose(1, 2))[..., :n].transpose(1, 2))
        # A packed row: tap m reads K-1-m tokens back, which are in the same document where the
        # position is at least K-1-m. Each tap gets channels of its own (weights with one tap each).
        w, size = self.conv.weight, self.conv.kernel_size[0]
        taps = torch.diag_embed(w[:, 0, :]).reshape(c * size, 1, size)
        y = F.conv1d(x.transpose(1, 2), taps, padding=size - 1, groups=c)[..., :n].view(b, c, size, n)
        back = torch.arange(size - 1, -1, -1, device=x.device)
        inside = (position_ids[:, None, :] >= back[:, None]).to(y.dtype)  # [b, size, n]
        return F.silu(((y * inside[:, None]).sum(2) + self.conv.bias[:, None]).transpose(1, 2))


class GatedAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, gate_norm: float = 16.0):
        super().__init__()
        self.h = cfg.num_heads
        self.gate_norm = gate_norm
        self.conv = ShortConv(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.gate = nn.Linear(cfg.dim, cfg.num_heads)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, position_ids=None, document_ids=None):
        b, n, c = x.shape
        q, k, v = self.qkv(self.conv(x, position_ids)).view(b, n, 3, self.h, c // self.h).unbind(2)  # [b, n, h, d]
        log_a = F.logsigmoid(self.gate(x)) / self.gate_norm  # [b, n, h], <= 0
        if document_ids is not None:  # a packed row: the gate's decay within each document
            return self.out(packed_linear_attention(q, k, v, log_a, (c // self.h) ** -0.5, document_ids).reshape(b, n, c))
        cum = torch.cumsum(log_a, dim=1).transpose(1, 2)  # [b, h, n]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
        decay = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")))
        scores = torch.einsum("bihd,bjhd->bhij", q * (c // self.h) ** -0.5, k) * decay
        o = torch.einsum("bhij,bjhd->bihd", scores, v)
        return self.out(o.reshape(b, n, c))


class GatedLM(LanguageModel):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__(cfg, [GatedAttention(cfg) for _ in range(cfg.num_layers)])
