"""Gated linear attention: a short causal depthwise conv, then a data-dependent per-token decay."""

import torch
import torch.nn.functional as F
from torch import nn

from examples.models.common import LanguageModel, ModelConfig


class ShortConv(nn.Module):
    """Causal depthwise conv1d over the sequence (kernel 4), as in Mamba / GLA / DeltaNet."""

    def __init__(self, dim, kernel_size=4):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=kernel_size - 1)

    def forward(self, x):  # [b, n, c]
        n = x.shape[1]
        return F.silu(self.conv(x.transpose(1, 2))[..., :n].transpose(1, 2))


class GatedAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, gate_norm: float = 16.0):
        super().__init__()
        self.h = cfg.num_heads
        self.gate_norm = gate_norm
        self.conv = ShortConv(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.gate = nn.Linear(cfg.dim, cfg.num_heads)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.conv(x)).view(b, n, 3, self.h, c // self.h).unbind(2)  # [b, n, h, d]
        log_a = F.logsigmoid(self.gate(x)) / self.gate_norm  # [b, n, h], <= 0
        cum = torch.cumsum(log_a, dim=1).transpose(1, 2)  # [b, h, n]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool, device=x.device))
        decay = torch.exp((cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")))
        scores = torch.einsum("bihd,bjhd->bhij", q * (c // self.h) ** -0.5, k) * decay
        o = torch.einsum("bhij,bjhd->bihd", scores, v)
        return self.out(o.reshape(b, n, c))


class GatedLM(LanguageModel):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__(cfg, [GatedAttention(cfg) for _ in range(cfg.num_layers)])
