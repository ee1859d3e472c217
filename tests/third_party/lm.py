"""The tiny LM around a third-party attention layer: embedding, one or two layers, head, loss."""

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, HEADS, HEAD_DIM = 32, 32, 2, 16


class TinyLM(nn.Module):
    """ids -> embedding -> `blocks` (residual) -> logits; with labels, the mean token loss."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, ids, labels=None):
        x = self.emb(ids)
        for block in self.blocks:
            x = x + block(x)
        logits = self.head(x)
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class LMHead(nn.Module):
    """A third-party LM (ids -> logits) with the loss interface of TinyLM."""

    def __init__(self, lm: nn.Module, logits=lambda out: out):
        super().__init__()
        self.lm, self._logits = lm, logits

    def forward(self, ids, labels=None):
        logits = self._logits(self.lm(ids))
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def gate_proj(n_out: int) -> nn.Linear:
    return nn.Linear(DIM, n_out)


def qkv(x: torch.Tensor, proj: nn.Linear, heads: int = HEADS, d: int = HEAD_DIM):
    """x [B, T, C] -> q, k, v [B, T, H, D] from one fused projection."""
    b, t, _ = x.shape
    return proj(x).view(b, t, 3, heads, d).unbind(2)
