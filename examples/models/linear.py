"""Basic linear attention (Katharopoulos et al.): elu+1 features, normalised by q . cumsum(k)."""

import torch
import torch.nn.functional as F
from torch import nn

from examples.models.common import LanguageModel, ModelConfig, packed_linear_attention


class LinearAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, eps: float = 1e-6):
        super().__init__()
        self.h = cfg.num_heads
        self.eps = eps
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, position_ids=None, document_ids=None):
        b, n, c = x.shape
        if document_ids is not None:  # a packed row: numerator and normaliser in one call, v with a column of ones
            q, k, v = self.qkv(x).view(b, n, 3, self.h, c // self.h).unbind(2)  # [b, n, h, d]
            q, k = F.elu(q) + 1, F.elu(k) + 1
            o = packed_linear_attention(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), None, 1.0, document_ids)
            return self.out((o[..., :-1] / (o[..., -1:] + self.eps)).reshape(b, n, c))
        q, k, v = self.qkv(x).view(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4)  # [b, h, n, d]
        q, k = F.elu(q) + 1, F.elu(k) + 1
        kv = torch.cumsum(k.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # running sum of k v^T
        num = torch.einsum("bhnd,bhnde->bhne", q, kv)
        den = torch.einsum("bhnd,bhnd->bhn", q, torch.cumsum(k, dim=2)).unsqueeze(-1) + self.eps
        return self.out((num / den).transpose(1, 2).reshape(b, n, c))


class LinearLM(LanguageModel):
    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__(cfg, [LinearAttention(cfg) for _ in range(cfg.num_layers)])
