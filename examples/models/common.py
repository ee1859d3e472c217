"""Pieces every example model shares: config, RMSNorm, SwiGLU MLP, pre-norm block, LM head and loss."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class ModelConfig:
    vocab_size: int = 64
    dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    mlp_tiles: int = 0
    """> 0: each block's norm + MLP runs on this many tiles of the sequence, each recomputed in
    backward, so only one tile's MLP activations are alive at once (0: the whole sequence)."""
    proj_tiles: int = 0
    """> 0: the token mixers' projections and output gates (everything position by position around
    the attention itself) run on this many tiles of the sequence, each recomputed in backward
    (lightning only; 0: the whole sequence)."""
    loss_chunks: int = 0
    """> 0: the loss takes the log-sum-exp over this many slices of the vocabulary, each recomputed
    in backward, so only [batch, tokens, vocab / loss_chunks] logits are alive at once (0: the
    whole logits and F.cross_entropy)."""


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
    """Pre-norm residual block around any token mixer (which takes the packed row's positions and documents)."""

    def __init__(self, cfg: ModelConfig, mixer: nn.Module):
        super().__init__()
        self.norm1 = RMSNorm(cfg.dim)
        self.mixer = mixer
        self.norm2 = RMSNorm(cfg.dim)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.mlp_tiles = cfg.mlp_tiles

    def forward(self, x, position_ids=None, document_ids=None):
        x = x + self.mixer(self.norm1(x), position_ids, document_ids)
        return x + in_tiles(self._mlp, self.mlp_tiles, x)

    def _mlp(self, x):
        return self.mlp(self.norm2(x))


def in_tiles(fn, tiles: int, *xs):
    """fn(*xs) for a position-by-position fn, on `tiles` tiles of the sequence (dim 1), each checkpointed:
    the tiles' results are the whole one's, and only one tile's activations are alive in backward."""
    if not tiles:
        return fn(*xs)
    parts = [checkpoint(fn, *t, use_reentrant=False) for t in zip(*(x.tensor_split(tiles, dim=1) for x in xs))]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts, dim=1)
    return tuple(torch.cat(p, dim=1) for p in zip(*parts))


class LanguageModel(nn.Module):
    """Embedding, blocks, norm, tied-free LM head; returns the mean next-token loss if labels are given.

    position_ids [B, T], restarting at 0 per document (HF's DataCollatorWithFlattening), make a row
    of packed documents: each is computed as if alone (its positions, its attention).
    """

    def __init__(self, cfg: ModelConfig, mixers: list[nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, m) for m in mixers)
        self.norm = RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, input_ids, labels=None, position_ids=None):
        x = self.embed(input_ids)
        document_ids = None if position_ids is None else documents_of(position_ids)
        for block in self.blocks:
            x = block(x, position_ids, document_ids)
        if labels is not None and self.cfg.loss_chunks:
            return chunked_cross_entropy(self.norm(x), self.head.weight, labels, self.cfg.loss_chunks)
        logits = self.head(self.norm(x))
        if labels is None:
            return logits
        # labels are already the next tokens (shifted by the data pipeline); -100 is ignored
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def documents_of(position_ids):
    """Document numbers [B, T] of packed rows whose positions restart at 0 at each document."""
    return torch.cumsum(position_ids == 0, dim=1)


def packed_linear_attention(q, k, v, log_decay, scale, document_ids):
    """Causal linear attention over q, k, v [b, n, h, d] that starts afresh at every document.

    Models trained on packed rows call a varlen kernel (FlashAttention's, fla's chunk kernels with
    cu_seqlens); this is lasp_fx's, an ordinary op on one device that parallelize() also shards.
    log_decay: None, [h] (a constant per head) or [b, n, h] (a gate), <= 0.
    """
    import lasp_fx

    return lasp_fx.linear_attention(q, k, v, log_decay, scale=scale, document_ids=document_ids)


def chunked_cross_entropy(hidden, weight, labels, chunks: int, ignore_index: int = -100):
    """F.cross_entropy(hidden @ weight.T, labels, ignore_index) without the whole logits.

    The vocabulary is cut in `chunks` slices rather than the sequence: every op stays position
    by position, so the loss is the same however the sequence is split (sequence parallelism,
    any length), and no loop depends on the length.
    """
    def lse(h, w):  # checkpointed: the backward recomputes this slice's logits, one slice at a time
        return torch.logsumexp(_wide(F.linear(h, w)), dim=-1)

    def label_logit(h, w, y):  # checkpointed too: its float32 operands are as large as the hidden states
        return (_wide(h) * _wide(F.embedding(y.clamp(min=0), w))).sum(-1)

    total = torch.stack([checkpoint(lse, hidden, w, use_reentrant=False) for w in weight.chunk(chunks)]).logsumexp(0)
    target = checkpoint(label_logit, hidden, weight, labels, use_reentrant=False)
    kept = labels != ignore_index
    return torch.where(kept, total - target, 0.0).sum() / kept.sum()


def _wide(x):
    """bf16 / fp16 -> fp32 for the exponentials and sums; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
