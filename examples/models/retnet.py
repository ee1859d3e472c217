"""RetNet style: multi-scale retention with gamma = 1 - 2^(-5-h), rotary q/k, group norm, swish gate."""

import torch
import torch.nn.functional as F
from torch import nn

from examples.models.common import LanguageModel, ModelConfig, packed_linear_attention


def rotate(x, positions, base=10000.0):
    """Rotary embedding on the last dim of x [b, n, h, d] at integer positions [n] (or [b, n]: per row)."""
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # [n, d/2] or [b, n, d/2]
    angles = angles if angles.dim() == 3 else angles[None]
    cos, sin = angles.cos()[:, :, None, :].to(x.dtype), angles.sin()[:, :, None, :].to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class MultiScaleRetention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h = cfg.num_heads
        self.d = cfg.dim // cfg.num_heads
        self.q = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.k = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.v = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.g = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.norm = nn.GroupNorm(self.h, cfg.dim, affine=False)
        gammas = 1 - 2.0 ** (-5 - torch.arange(self.h, dtype=torch.float32))
        self.register_buffer("gammas", gammas)

    def forward(self, x, position_ids=None, document_ids=None):
        b, n, _ = x.shape
        pos = torch.arange(n, device=x.device) if position_ids is None else position_ids
        q = rotate(self.q(x).view(b, n, self.h, self.d), pos)
        k = rotate(self.k(x).view(b, n, self.h, self.d), pos) * self.d**-0.5
        v = self.v(x).view(b, n, self.h, self.d)
        if document_ids is not None:  # a packed row: decay gamma per step, within each document
            o = packed_linear_attention(q, k, v, self.gammas.log(), 1.0, document_ids).reshape(b * n, -1)
        else:
            o = self._quadratic(q, k, v, pos)
        o = self.norm(o).view(b, n, -1)
        return self.out(F.silu(self.g(x)) * o)

    def _quadratic(self, q, k, v, pos):  # [b, n, h, d]
        b, n = q.shape[:2]
        exponent = (pos[:, None] - pos[None, :]).float()
        decay = torch.where(exponent >= 0, self.gammas[:, None, None] ** exponent.clamp(min=0), 0.0)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) * decay
        return torch.einsum("bhij,bjhd->bihd", scores, v).reshape(b * n, -1)


class RetNetLM(LanguageModel):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__(cfg, [MultiScaleRetention(cfg) for _ in range(cfg.num_layers)])
