"""torchscale 0.3.0's RetNet retention (`MultiScaleRetention`, its parallel form) in a TinyLM.

`torchscale.architecture.retnet` imports fairscale and timm at module level, and timm imports
torchvision: torchscale's pinned dependencies cannot be installed beside torch 2.13, so it is
installed with --no-deps (.ci/run). `torchscale.component.multiscale_retention` imports only
torch: the layer runs as shipped. Its inputs, the rotary sin / cos and the decay mask divided by
the square root of its row sums, are computed as `RetNetRelPos.forward` computes them (retnet.py,
the parallel branch).
"""

from types import SimpleNamespace

import torch
from torch import nn

from tests.third_party.lm import DIM, HEADS, TinyLM


def _rel_pos(slen: int, angle: torch.Tensor, decay: torch.Tensor):
    """torchscale.architecture.retnet.RetNetRelPos.forward(slen), parallel branch."""
    index = torch.arange(slen).to(decay)
    sin = torch.sin(index[:, None] * angle[None, :])
    cos = torch.cos(index[:, None] * angle[None, :])
    mask = torch.tril(torch.ones(slen, slen).to(decay))
    mask = torch.masked_fill(index[:, None] - index[None, :], ~mask.bool(), float("inf"))
    mask = torch.exp(mask * decay[:, None, None])
    mask = torch.nan_to_num(mask)
    mask = mask / mask.sum(dim=-1, keepdim=True).sqrt()
    return (sin, cos), mask


class _Retention(nn.Module):
    def __init__(self):
        super().__init__()
        from torchscale.component.multiscale_retention import MultiScaleRetention

        args = SimpleNamespace(multiway=False, layernorm_eps=1e-6)
        self.retention = MultiScaleRetention(args, DIM, DIM, HEADS)
        # RetNetRelPos.__init__, with decoder_embed_dim = DIM and decoder_retention_heads = HEADS
        angle = 1.0 / (10000 ** torch.linspace(0, 1, DIM // HEADS // 2))
        self.register_buffer("angle", angle.unsqueeze(-1).repeat(1, 2).flatten())
        self.register_buffer("decay", torch.log(1 - 2 ** (-5 - torch.arange(HEADS, dtype=torch.float))))

    def forward(self, x):
        return self.retention(x, _rel_pos(x.shape[1], self.angle, self.decay))


class TorchscaleRetNetLM(TinyLM):
    def __init__(self):
        super().__init__([_Retention()])
