"""Pieces every example model shares: config, RMSNorm, SwiGLU MLP, pre-norm block, LM head and loss."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 64
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block around any token mixer."""

    def __init__(self, cfg: ModelConfig, mixer: nn.Module):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim)
        self.mixer = mixer
        self.norm2 = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_ratio * cfg.dim)

    def forward(self, x):
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LanguageModel(nn.Module):
    """Embedding, blocks, norm, tied-free LM head; returns the mean next-token loss if labels are given."""

    def __init__(self, cfg: ModelConfig, mixers: list[nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, m) for m in mixers)
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, input_ids, labels=None):
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if labels is None:
            return logits
        # labels are already the next tokens (shifted by the data pipeline); -100 is ignored
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
