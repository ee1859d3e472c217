"""Models the pass must leave alone (softmax, no attention, non-causal) and a hybrid."""

import torch
import torch.nn.functional as F
from torch import nn

from tests.corpus.common import Projections, elu1
from tests.corpus.decay_masks import RetNetPow


class SoftmaxManual(nn.Module):
    """Causal softmax attention written out: -inf mask, softmax, product with v."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1), float("-inf"))
        return self.p.merge((s.softmax(-1) @ v).transpose(1, 2))


class SDPAOnly(nn.Module):
    """Causal softmax attention through scaled_dot_product_attention."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        return self.p.merge(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2))


class AttentionFree(nn.Module):
    """An MLP and a causal depthwise convolution: mixes tokens, but has no attention."""

    def __init__(self, dim=32):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, padding=2, groups=dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        t = x.shape[1]
        x = x + self.conv(x.transpose(1, 2))[..., :t].transpose(1, 2)
        gram = x @ x.transpose(1, 2)  # a T x T product that feeds no value product
        return self.mlp(x) + gram.mean() * 0


class Bidirectional(nn.Module):
    """Linear attention without a mask (an encoder): not causal, so LASP does not apply."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        return self.p.merge(((elu1(q) @ elu1(k).transpose(-1, -2)) @ v).transpose(1, 2))


class AntiCausal(nn.Module):
    """triu instead of tril: each query sees the future."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        return self.p.merge((torch.triu(q @ k.transpose(-1, -2)) @ v).transpose(1, 2))


class LearnableTemperature(nn.Module):
    """Scores times a learnable scalar: the op's scale is a constant, so this is not rewritten."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.p = Projections(dim, heads)
        self.temperature = nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        s = (q @ k.transpose(-1, -2)).tril() * self.temperature
        return self.p.merge((s @ v).transpose(1, 2))


class Hybrid(nn.Module):
    """A RetNet layer followed by a causal softmax layer, with norms and an MLP."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.retention = RetNetPow(dim, heads)
        self.softmax = SoftmaxManual(dim, heads)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())

    def forward(self, x):
        x = x + self.retention(self.norm1(x))
        x = x + self.softmax(self.norm2(x))
        return x + self.mlp(x)


class DecayRowNormalised(nn.Module):
    """A RetNet-style decay mask with a row normaliser (issue 20): the denominator detached, its
    absolute value, or clamped to >= 1. Not the op's plain normalised form (equal in value on
    positive inputs at most, never in gradient): the rewrite applies the same steps to the op's
    normaliser."""

    def __init__(self, how, dim=32, heads=4):
        super().__init__()
        self.p, self.how = Projections(dim, heads), how
        self.register_buffer("gamma", 1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float32)))

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        i = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)
        dist = i[:, None] - i[None, :]
        mask = torch.where(dist >= 0, self.gamma.to(x.dtype)[:, None, None] ** dist.clamp(min=0), 0.0)
        qk = elu1(q) @ elu1(k).transpose(-1, -2) * mask
        den = qk.detach().sum(-1, keepdim=True)
        if self.how in ("abs", "clamp", "where"):
            den = den.abs()
        if self.how == "clamp":
            den = den.clamp(min=1)
        if self.how == "where":  # a clamp the rewrite does not read: the probe must see it act
            den = torch.where(den > 1, den, 1.0)
        if self.how == "detach_eps":  # a detach behind an epsilon: the probe must see the gradients differ
            den = den + 1e-6
        return self.p.merge(((qk / den) @ v).transpose(1, 2))


class DetachedRowNorm(DecayRowNormalised):
    def __init__(self):
        super().__init__("detach")


class AbsRowNorm(DecayRowNormalised):
    def __init__(self):
        super().__init__("abs")


class ClampRowNorm(DecayRowNormalised):
    def __init__(self):
        super().__init__("clamp")


class WhereRowNorm(DecayRowNormalised):
    def __init__(self):
        super().__init__("where")


class DetachedEpsRowNorm(DecayRowNormalised):
    def __init__(self):
        super().__init__("detach_eps")


class FeatureSumScores(nn.Module):
    """Causal linear attention with its scores written as a product summed over the features,
    `(q[..., :, None, :] * k[..., None, :, :]).sum(-1)`, not as q @ k^T: not matched, said why;
    with `per_channel`, a decay per feature channel inside the sum (gated linear attention, Kimi
    delta attention's scores), which is not one mask for every feature."""

    def __init__(self, per_channel=False, dim=32, heads=4):
        super().__init__()
        self.p, self.per_channel = Projections(dim, heads), per_channel
        self.gate = nn.Linear(dim, dim)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        t = x.shape[1]
        prod = elu1(q).unsqueeze(-2) * elu1(k).unsqueeze(-3)  # [B, H, T, T, D]
        if self.per_channel:
            g = F.logsigmoid(self.gate(x)).view(*q.transpose(1, 2).shape).transpose(1, 2).cumsum(2)
            later = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
            prod = prod * (g.unsqueeze(-2) - g.unsqueeze(-3)).masked_fill(later[..., None], float("-inf")).exp()
        s = prod.sum(-1).tril()
        return self.p.merge((s @ v).transpose(1, 2))


class PerChannelDecayScores(FeatureSumScores):
    def __init__(self):
        super().__init__(per_channel=True)
