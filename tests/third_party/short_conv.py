"""Short causal convolutions before linear attention, written the ways fla and HF write them.

fla's `use_short_conv` layers (GLA, DeltaNet, ...) run q, k and v each through a depthwise
causal conv; HF's linear-attention layers (Qwen3-Next, Bamba, Falcon-H1, ...) run the fused qkv
through `nn.Conv1d(groups=channels, padding=k-1)` cut back to T tokens; other code pads k-1 zeros
on the left and convolves without padding. The attention after it is fla's naive simple GLA,
kept in the model's dtype (fla's casts to float32), so the test compares in float64.
Under parallelize() each conv reads the k-1 tokens before its slice from the earlier ranks.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tests.third_party.lm import DIM, HEAD_DIM, HEADS, TinyLM, gate_proj

WIDTH = HEADS * HEAD_DIM


def _hf_conv(conv: nn.Conv1d, x):
    """transformers' own causal conv (Qwen3-Next's, no cache): conv1d(padding=k-1)[..., :T], silu."""
    from transformers.models.qwen3_next.modeling_qwen3_next import causal_conv1d_forward

    return causal_conv1d_forward(conv, x.transpose(1, 2), None, 0, activation="silu").transpose(1, 2)


def _sliced_conv(conv: nn.Conv1d, x):
    """conv(padding=k-1), then the first T outputs: the idiom of most research code."""
    t = x.shape[1]
    return F.silu(conv(x.transpose(1, 2))[..., :t].transpose(1, 2))


def _left_padded_conv(conv: nn.Conv1d, x):
    """F.pad(x, (reach, 0)) then a conv without padding (Mamba's reference, Hyena-style code)."""
    reach = conv.dilation[0] * (conv.kernel_size[0] - 1)
    y = F.conv1d(F.pad(x.transpose(1, 2), (reach, 0)), conv.weight, conv.bias, dilation=conv.dilation,
                 groups=conv.groups)
    return F.silu(y).transpose(1, 2)


_FORMS = {"hf": _hf_conv, "slice": _sliced_conv, "pad": _left_padded_conv}


def _depthwise(channels: int, kernel: int, dilation: int) -> nn.Conv1d:
    return nn.Conv1d(channels, channels, kernel, groups=channels, padding=dilation * (kernel - 1), dilation=dilation)


class _Layer(nn.Module):
    def __init__(self, form: str, kernel: int, dilation: int, fused: bool):
        super().__init__()
        self.conv, self.fused = _FORMS[form], fused
        self.qkv = nn.Linear(DIM, 3 * WIDTH, bias=False)
        n = 1 if fused else 3  # HF: one conv over the fused q, k, v; fla: one conv each
        self.convs = nn.ModuleList(_depthwise(3 * WIDTH // n, kernel, dilation) for _ in range(n))
        self.gate = gate_proj(HEADS)
        self.out = nn.Linear(WIDTH, DIM, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.qkv(x)
        if self.fused:
            h = self.conv(self.convs[0], h)
        else:
            h = torch.cat([self.conv(c, part) for c, part in zip(self.convs, h.chunk(3, dim=-1))], dim=-1)
        q, k, v = h.view(b, t, 3, HEADS, HEAD_DIM).unbind(2)
        o = _simple_gla(q, k, v, F.logsigmoid(self.gate(x)))
        return self.out(o.reshape(b, t, -1))


def _simple_gla(q, k, v, g):
    """fla.ops.simple_gla.naive.naive_parallel_simple_gla without its float32 cast."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))  # [B, H, T, ...]
    g = g.cumsum(-1)
    decay = (g.unsqueeze(-1) - g.unsqueeze(-2)).tril().exp().tril()
    return ((q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 * decay) @ v).transpose(1, 2)


class ShortConvLM(TinyLM):
    """A TinyLM of one short-conv + simple-GLA layer; `form` is how the conv is written."""

    def __init__(self, form: str = "hf", kernel: int = 4, dilation: int = 1, fused: bool = True):
        super().__init__([_Layer(form, kernel, dilation, fused)])
