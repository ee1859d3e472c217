"""Family 5: an explicit Python loop over chunks carrying a state (unrolled by capture)."""

import torch
from torch import nn

from tests.corpus.common import Projections


class BlockLoopDecay(nn.Module):
    """Lightning-attention style: intra-chunk masked product plus the carried state, per-head decay."""

    def __init__(self, dim=32, heads=4, chunk=4):
        super().__init__()
        self.p, self.chunk = Projections(dim, heads), chunk
        self.register_buffer("log_decay", -torch.linspace(0.05, 0.5, heads))

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))  # [B, H, T, D]
        b, h, t, d = q.shape
        lam = self.log_decay.to(x.dtype)[:, None, None]  # [H, 1, 1]
        state = q.new_zeros(b, h, d, v.shape[-1])
        outs = []
        for start in range(0, t, self.chunk):
            qi, ki, vi = (y[:, :, start:start + self.chunk] for y in (q, k, v))
            c = qi.shape[2]
            idx = torch.arange(c, device=x.device, dtype=x.dtype)
            diff = idx[:, None] - idx[None, :]
            mask = torch.where(diff >= 0, torch.exp(lam * diff), 0.0)  # [H, c, c]
            intra = ((qi @ ki.transpose(-1, -2)) * mask) @ vi
            inter = (qi * torch.exp(lam * (idx[:, None] + 1))) @ state
            outs.append(intra + inter)
            state = torch.exp(lam * c) * state + (ki * torch.exp(lam * (c - 1 - idx[:, None]))).transpose(-1, -2) @ vi
        o = torch.cat(outs, dim=2) * d**-0.5
        return self.p.merge(o.transpose(1, 2))
