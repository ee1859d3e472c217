"""Models that write into tensors in place (`x[..., idx] = y`) for the shard rule of writes (spawned ranks import them).

Each is ids -> embedding -> one block with the write -> a causal mixer (so positions matter) -> logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lasp_fx

VOCAB, DIM, HEADS = 32, 12, 2


class WriteLM(nn.Module):
    """`kind` names the method that holds the write."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(VOCAB, DIM)
        self.inv_freq = nn.Buffer(1.0 / (100.0 ** (torch.arange(DIM // 2) / (DIM // 2))).double())
        self.proj = nn.Linear(DIM, DIM)
        self.conv = nn.Conv1d(DIM, DIM, 3, groups=DIM, padding=2)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, ids, labels=None):
        x = self.embed(ids)
        x = x + getattr(self, "_" + self.kind)(x)
        q, k, v = self.qkv(x).view(*x.shape[:2], 3, HEADS, -1).unbind(2)
        x = x + lasp_fx.linear_attention(F.elu(q) + 1, F.elu(k) + 1, v).flatten(2)
        logits = self.head(x)
        if labels is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())

    # ------------------------------------------------------------------ exact on a slice
    def _mrope_copy(self, x):
        """Qwen3.5's M-RoPE table: the H and W frequencies copied into every third feature of T's."""
        pos = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
        freqs = torch.stack([pos, pos * 0.5, pos * 0.25])[:, None, :, None] * self.inv_freq  # [3, 1, T, F]
        table = freqs[0]
        for dim, offset in ((1, 1), (2, 2)):
            table[..., offset::3] = freqs[dim, ..., offset::3]
        angle = torch.cat((table, table), -1)
        return self.proj(x) * torch.cos(angle) + x * torch.sin(angle)

    def _feature_index_put(self, x):
        """Features picked by an index tensor, overwritten in place, then added to with repeated
        indices (index 3 twice: accumulate sums both)."""
        y = self.proj(x).clone()
        idx = torch.tensor([0, 3, 5, 3], device=x.device)
        y[..., idx[:3]] = torch.tanh(x[..., idx[:3]])
        return torch.ops.aten.index_put.default(y, [None, None, idx], x[..., :4] * 2.0, True)

    def _broadcast_write(self, x):
        """A value that carries no position written into every position's first features, a scalar
        into the next, then an in-place product along the features of a causal conv's output."""
        y = self.proj(x).clone()
        y[..., :4] = self.proj.bias[:4]
        y[..., 4:6] = 0.5
        z = self.conv(y.transpose(1, 2))[..., :x.shape[1]]
        z[:, :6].mul_(torch.sigmoid(y[..., :6]).transpose(1, 2))
        return torch.tanh(z.transpose(1, 2))

    # ------------------------------------------------------------------ refused
    def _write_into_table(self, x):
        """positions written into a buffer of the maximum length, then summed over it: each rank
        would hold only its own rows."""
        buf = x.new_zeros(x.shape[0], 64, DIM)
        buf[:, :x.shape[1]] = self.proj(x)
        return x * buf.sum(1, keepdim=True)

    def _write_at_positions(self, x):
        """The first and third positions overwritten: chosen positions of the sequence."""
        y = self.proj(x).clone()
        y[:, torch.tensor([0, 2], device=x.device)] = 0.0
        return y

    def _write_into_padded(self, x):
        """A token shift whose padded tensor is written after the pad: on a slice the pad holds the
        previous rank's positions, which that rank's write never reaches."""
        p = F.pad(self.proj(x), (0, 0, 1, 0))
        p[:, 1:, :4] = 0.0
        return p[:, :-1]

    def _add_into_table(self, x):
        """An in-place add (pointwise, no copy_) into the rows of a table sliced to the length."""
        buf = x.new_zeros(64, DIM)
        buf[:x.shape[1]].add_(self.proj(x)[0])
        return x * buf.sum(0)

    def _index_from_tokens(self, x):
        """Features chosen per position by a tensor that runs along the sequence."""
        y = self.proj(x).clone()
        pick = (x[..., 0] > 0).long()  # [B, T]
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        cols = torch.arange(x.shape[1], device=x.device)[None, :]
        y[rows, cols, pick] = 1.0
        return y


EQUAL = ["mrope_copy", "feature_index_put", "broadcast_write"]
REFUSED = ["write_into_table", "write_at_positions", "index_from_tokens", "write_into_padded",
           "add_into_table"]

