"""Hybrid: lightning-style linear attention, with causal softmax attention in every 4th layer and the last."""

import torch
import torch.nn.functional as F
from torch import nn

from examples.models.common import LanguageModel, ModelConfig
from examples.models.lightning import LightningAttention
from examples.models.retnet import rotate


class SoftmaxAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.h = cfg.num_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x, position_ids=None, document_ids=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, c // self.h).unbind(2)
        pos = torch.arange(n, device=x.device) if position_ids is None else position_ids
        q, k, v = (t.transpose(1, 2) for t in (rotate(q, pos), rotate(k, pos), v))
        if document_ids is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a packed row: each query sees the earlier keys of its own document
            causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            same = document_ids[:, None, :, None] == document_ids[:, None, None, :]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal & same)
        return self.out(o.transpose(1, 2).reshape(b, n, c))


def softmax_layers(num_layers: int) -> list[int]:
    """Every 4th layer and the last one, so that a hybrid of 2 or 3 layers has one too."""
    return sorted({i for i in range(3, num_layers, 4)} | ({num_layers - 1} if num_layers > 1 else set()))


class HybridLM(LanguageModel):
    def __init__(self, cfg: ModelConfig = ModelConfig(num_layers=4)):
        softmax = softmax_layers(cfg.num_layers)
        mixers = [SoftmaxAttention(cfg) if i in softmax else LightningAttention(cfg) for i in range(cfg.num_layers)]
        super().__init__(cfg, mixers)
