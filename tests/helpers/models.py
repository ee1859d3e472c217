"""Small models that exercise parallelize()'s sharding rules one by one (importable by spawned ranks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lasp_fx


class DirectOpLM(nn.Module):
    """Calls lasp_fx.linear_attention itself, plus every position-mixing op with a sharding rule:
    a learned position table sliced to the length, a causal depthwise conv, arange positions,
    a token shift, and a mean cross-entropy with ignored labels."""

    def __init__(self, vocab=32, dim=16, heads=2, max_len=512):
        super().__init__()
        self.h = heads
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.1)
        self.conv = nn.Conv1d(dim, dim, 4, groups=dim, padding=3)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.log_decay = nn.Parameter(torch.full((heads,), -0.1))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids, labels=None):
        x = self.embed(ids)
        n = x.shape[1]
        x = x + self.pos[:n]
        x = x + self.conv(x.transpose(1, 2))[..., :n].transpose(1, 2)
        q, k, v = self.qkv(x).view(*x.shape[:2], 3, self.h, -1).unbind(2)
        angle = torch.arange(n, device=x.device).float() * 0.01
        q = q * torch.cos(angle)[None, :, None, None]
        x = x + lasp_fx.linear_attention(q, k, v, self.log_decay).flatten(2)
        x = x + F.pad(x, (0, 0, 1, -1))  # token shift (RWKV style)
        logits = self.head(x)
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class PooledRegressor(nn.Module):
    """Mean-pools over the sequence and regresses: a reduction over positions and an MSE loss."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)

    def forward(self, ids, labels=None):
        x = torch.tanh(self.proj(self.embed(ids)))
        pooled = x.mean(dim=1)  # [B, dim]
        pred = self.out(pooled).squeeze(-1)
        if labels is None:
            return x
        return F.mse_loss(pred, labels.to(pred.dtype).mean(dim=1))


class CumsumMixer(nn.Module):
    """Mixes positions with a running mean that is not attention: must be refused."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)

    def forward(self, ids):
        x = self.embed(ids)
        return torch.cumsum(x, dim=1)


class LengthAsNumber(nn.Module):
    """Divides by the sequence length taken as a number: must be refused."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)

    def forward(self, ids):
        x = self.embed(ids)
        return x.sum(dim=1) / x.shape[1]


class NonCausalConv(nn.Module):
    """A centred ('same') convolution over the sequence sees the future: must be refused."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, ids):
        return self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2)


class HFLlama(nn.Module):
    """A tiny HF transformers Llama (softmax attention, GQA, rotary, its own causal mask and loss
    shift), called as people call it: input ids, labels and the tokenizer's attention_mask, no cache."""

    def __init__(self, vocab=32):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          attn_implementation="sdpa", use_cache=False)
        self.model = LlamaForCausalLM(cfg)

    def forward(self, ids, labels=None, attention_mask=None):
        out = self.model(input_ids=ids, labels=labels, attention_mask=attention_mask, use_cache=False)
        return out.logits if labels is None else out.loss


def _head_and_loss(lm, x, labels):
    """The example LM's final norm and head on hidden states x; the mean cross-entropy with labels."""
    logits = lm.head(lm.norm(x))
    if labels is None:
        return logits
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


class CheckpointedLM(nn.Module):
    """The lightning example with activation checkpointing on every block (non-reentrant, or the
    reentrant form with use_reentrant=True)."""

    def __init__(self, use_reentrant=False):
        super().__init__()
        from examples.models import LightningLM

        self.lm = LightningLM()
        self.use_reentrant = use_reentrant

    def forward(self, ids, labels=None):
        from torch.utils.checkpoint import checkpoint

        lm = self.lm
        x = lm.embed(ids)
        for block in lm.blocks:
            x = checkpoint(block, x, use_reentrant=self.use_reentrant)
        return _head_and_loss(lm, x, labels)


@torch.compiler.nested_compile_region
def _mlp_region(block, x):
    return block.mlp(block.norm2(x))


class CompiledRegionLM(nn.Module):
    """The lightning example with each block's MLP in a nested compile region (compiled once, called
    per block and tile) on 3 checkpointed tiles of the sequence."""

    def __init__(self):
        super().__init__()
        from examples.models import LightningLM

        self.lm = LightningLM()

    def forward(self, ids, labels=None):
        from examples.models.common import in_tiles

        lm = self.lm
        x = lm.embed(ids)
        for block in lm.blocks:
            x = x + block.mixer(block.norm1(x))
            x = x + in_tiles(lambda t, block=block: _mlp_region(block, t), 3, x)
        return _head_and_loss(lm, x, labels)


class ChunkedLossLM(nn.Module):
    """An embedding, residual position-wise blocks (checkpoint them with lasp_fx.memory.checkpoint_blocks)
    and the examples' vocabulary-chunked loss: a model whose step memory is mostly the loss's backward."""

    def __init__(self, vocab=2048, dim=64, layers=2, chunks=32):
        super().__init__()
        from examples.models import ModelConfig

        self.cfg = ModelConfig(vocab_size=vocab, dim=dim, num_layers=layers, loss_chunks=chunks)
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_Residual(dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, ids, labels):
        from examples.models.common import chunked_cross_entropy

        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return chunked_cross_entropy(x, self.head.weight, labels, self.cfg.loss_chunks)


class _Residual(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return x + F.silu(self.proj(x))


class _Tiles(nn.Module):
    """An embedding and a projection; `tiles(x)` is what each refused spelling does to the sequence."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids):
        return self.tiles(self.embed(ids))


class TileCumsum(_Tiles):
    """Sequence tiles with a running sum inside each: mixes positions, must be refused."""

    def tiles(self, x):
        return torch.cat([torch.cumsum(t, dim=1) for t in x.tensor_split(2, dim=1)], dim=1)


class TileReversed(_Tiles):
    """Position-wise tiles concatenated back in reverse order: must be refused."""

    def tiles(self, x):
        return torch.cat([self.proj(t) for t in reversed(x.tensor_split(2, dim=1))], dim=1)


class TileDropped(_Tiles):
    """Position-wise tiles with the last one left out (the sequence shrinks): must be refused."""

    def tiles(self, x):
        return torch.cat([self.proj(t) for t in x.tensor_split(3, dim=1)[:2]], dim=1)


class TileShifted(_Tiles):
    """Tile i of x with tile i + 1 of a second tensor (a shift by a tile): must be refused."""

    def tiles(self, x):
        y = self.proj(x)
        xs, ys = x.tensor_split(2, dim=1), y.tensor_split(2, dim=1)
        return torch.cat([a * b for a, b in zip(xs, ys[1:] + ys[:1])], dim=1)

