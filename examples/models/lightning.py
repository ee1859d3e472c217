"""TransNormer / lightning-attention style: silu features, per-head decay slopes, SRMSNorm, output gate."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from examples.models.common import LanguageModel, ModelConfig, in_tiles, packed_linear_attention


def _slopes(num_heads):
    # ALiBi-style geometric slopes, as TransNormerLLM uses for its per-head decay exp(-slope)
    start = 2 ** (-(2 ** -(math.log2(num_heads) - 3)))
    return torch.tensor([start * start**i for i in range(num_heads)])


class LightningAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h = cfg.num_heads
        self.qkvu = nn.Linear(cfg.dim, 4 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.register_buffer("slopes", _slopes(cfg.num_heads), persistent=False)
        self.tiles = cfg.proj_tiles

    def forward(self, x, position_ids=None, document_ids=None):
        b, n, _ = x.shape
        q, k, v, u = in_tiles(self._project, self.tiles, x)  # [b, n, h, d] each
        if document_ids is not None:  # a packed row: decay exp(-slope) per step, within each document
            o = packed_linear_attention(q, k, v, -self.slopes, 1.0, document_ids).reshape(b, n, -1)
        else:
            o = self._quadratic(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return in_tiles(self._output, self.tiles, o, u)

    def _project(self, x):
        q, k, v, u = self.qkvu(x).view(*x.shape[:2], 4 * self.h, -1).chunk(4, dim=2)
        return F.silu(q), F.silu(k), v, u

    def _output(self, o, u):
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + 1e-6)  # SRMSNorm
        return self.out(o * torch.sigmoid(u.flatten(2)))

    def _quadratic(self, q, k, v):  # [b, h, n, d]
        n = q.shape[2]
        i = torch.arange(n, device=q.device)
        dist = (i[:, None] - i[None, :]).to(q.dtype)  # i - j
        decay = torch.exp(-self.slopes[:, None, None] * dist).masked_fill(dist < 0, 0.0)
        o = ((q @ k.transpose(-1, -2)) * decay) @ v  # no 1/sqrt(d): TransNormer normalises after
        return o.transpose(1, 2).flatten(2)


class LightningLM(LanguageModel):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__(cfg, [LightningAttention(cfg) for _ in range(cfg.num_layers)])
