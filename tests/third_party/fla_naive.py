"""fla-core's reference (`naive`) PyTorch implementations, each as one attention layer of a TinyLM.

fla-core is a dependency of lasp_fx, so these need no extra install. They are written the ways
research code is: float32 casts, einsums over three operands, Python loops over tokens or chunks,
in-place writes into a preallocated output; several are look-alikes that must be refused
(delta rules, softmax with a forget gate, Taylor and quadratic kernels).
"""

import torch
import torch.nn.functional as F
from torch import nn

from tests.third_party.lm import DIM, HEAD_DIM, HEADS, TinyLM, gate_proj, qkv


class _Layer(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.qkv = nn.Linear(DIM, 3 * HEADS * HEAD_DIM, bias=False)
        self.gate = gate_proj(HEADS * HEAD_DIM if kind in ("gla", "hgrn") else HEADS)
        self.out = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = qkv(x, self.qkv)  # [B, T, H, D]
        g = F.logsigmoid(self.gate(x))
        o = _CALLS[self.kind](q, k, v, g.view(b, t, HEADS, -1).squeeze(-1), x)
        return self.out(o.reshape(b, t, -1).to(x.dtype))  # several return float32 whatever the input


def _bhtd(*xs):
    return [x.transpose(1, 2) for x in xs]


def _retention(q, k, v, g, x):
    from fla.ops.retention.naive import naive_retention
    return naive_retention(*_bhtd(q, k, v)).transpose(1, 2)


def _chunk_linear(q, k, v, g, x):
    from fla.ops.linear_attn.naive import naive_chunk_linear_attn
    return naive_chunk_linear_attn(F.elu(q) + 1, F.elu(k) + 1, v, normalize=True)


def _recurrent_linear(q, k, v, g, x):
    from fla.ops.linear_attn.naive import naive_recurrent_linear_attn
    return naive_recurrent_linear_attn(q, k, v)[0]


def _parallel_simple_gla(q, k, v, g, x):
    from fla.ops.simple_gla.naive import naive_parallel_simple_gla
    return naive_parallel_simple_gla(q, k, v, g)[0]


def _chunk_simple_gla(q, k, v, g, x):
    from fla.ops.simple_gla.naive import naive_chunk_simple_gla
    return naive_chunk_simple_gla(q, k, v, g, chunk_size=16)[0]


def _based(q, k, v, g, x):
    from fla.ops.based.naive import naive_parallel_based
    return naive_parallel_based(*_bhtd(q, k, v)).transpose(1, 2)


def _rebased(q, k, v, g, x):
    from fla.ops.rebased.naive import naive_parallel_rebased
    return naive_parallel_rebased(*_bhtd(q, k, v)).transpose(1, 2)


def _delta_rule(q, k, v, g, x):
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    q, k, v = _bhtd(q, F.normalize(k, dim=-1), v)
    return delta_rule_recurrence(q, k, v, torch.sigmoid(g).transpose(1, 2))[0].transpose(1, 2)


def _gated_delta_rule(q, k, v, g, x):
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    return naive_recurrent_gated_delta_rule(q, F.normalize(k, dim=-1), v, torch.sigmoid(g), g)[0]


def _forgetting(q, k, v, g, x):
    from fla.ops.forgetting_attn.naive import naive_forgetting_attn
    return naive_forgetting_attn(q, k, v, g)


def _gla(q, k, v, g, x):
    from fla.ops.gla.naive import naive_recurrent_gla
    return naive_recurrent_gla(q, k, v, g)[0]


def _hgrn(q, k, v, g, x):
    from fla.ops.hgrn.naive import naive_recurrent_hgrn
    b, t, _ = x.shape
    return naive_recurrent_hgrn(v.reshape(b, t, -1), g.reshape(b, t, -1))[0]


_CALLS = {
    "retention": _retention, "chunk_linear": _chunk_linear, "recurrent_linear": _recurrent_linear,
    "parallel_simple_gla": _parallel_simple_gla, "chunk_simple_gla": _chunk_simple_gla, "based": _based,
    "rebased": _rebased, "delta_rule": _delta_rule, "gated_delta_rule": _gated_delta_rule,
    "forgetting": _forgetting, "gla": _gla, "hgrn": _hgrn,
}
KINDS = tuple(_CALLS)


class FlaNaiveLM(TinyLM):
    """A TinyLM whose one attention layer calls fla's naive implementation `kind`."""

    def __init__(self, kind: str = "retention"):
        super().__init__([_Layer(kind)])
