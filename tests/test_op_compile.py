"""The op is one opaque node for opcheck, torch.compile(fullgraph=True) and torch.export."""

import pytest
import torch

import lasp_fx
from lasp_fx.numerics import assert_close_rms, random_inputs

OP = torch.ops.lasp_fx.linear_attention.default


def _op_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is OP]


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_opcheck(decay):
    a = random_inputs(1, 70, 4, 8, 4, kv_heads=2, decay=decay, initial_state=True)
    for t in a.values():
        t.requires_grad_()
    torch.library.opcheck(OP, (a["q"], a["k"], a["v"], a.get("log_decay"), a["initial_state"], 0.5))
    B, T, H, D = a["q"].shape
    do, ds = torch.randn(B, T, H, 4, dtype=torch.float64), torch.randn(B, H, D, 4, dtype=torch.float64)
    bwd = torch.ops.lasp_fx.linear_attention_backward.default  # no double backward: plain inputs
    a = {n: t.detach() for n, t in a.items()}
    _, final_state, saved = OP(a["q"], a["k"], a["v"], a.get("log_decay"), a["initial_state"], 0.5)
    for decay_grad in (True, False) if decay != "none" else (False,):
        for kept in [(None, None), (saved, final_state)]:
            args = (do, ds, a["q"], a["k"], a["v"], a.get("log_decay"), a["initial_state"], *kept, 0.5, decay_grad)
            torch.library.opcheck(bwd, args)


def test_compile_fullgraph_one_node_same_values():
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    a = random_inputs(2, 40, 4, 8, 8, decay="gate")
    for t in a.values():
        t.requires_grad_()
    fn = lambda q, k, v, log_decay: lasp_fx.linear_attention(q, k, v, log_decay) * 2
    compiled = torch.compile(fn, fullgraph=True, backend=recording_backend)
    out = compiled(**a)
    ref = fn(**a)
    assert_close_rms(out, ref, 1e-14, "o")
    assert len(graphs) == 1
    ops = [n for n in graphs[0].graph.nodes if "linear_attention" in str(n.target)]
    assert len(ops) == 1, graphs[0].graph
    g = torch.autograd.grad(out.sum(), list(a.values()))
    g_ref = torch.autograd.grad(ref.sum(), list(a.values()))
    for name, x, y in zip(a, g, g_ref):
        assert_close_rms(x, y, 1e-14, f"d{name}")


def test_compile_aot_eager_gradients():
    a = random_inputs(1, 33, 2, 4, 4, decay="const", initial_state=True)
    for t in a.values():
        t.requires_grad_()
    fn = lambda **kw: lasp_fx.linear_attention(**kw, output_final_state=True)
    o, s = torch.compile(fn, fullgraph=True, backend="aot_eager")(**a)
    o_ref, s_ref = fn(**a)
    g = torch.autograd.grad(o.sum() + s.sum(), list(a.values()))
    g_ref = torch.autograd.grad(o_ref.sum() + s_ref.sum(), list(a.values()))
    for name, x, y in zip(a, g, g_ref):
        assert_close_rms(x, y, 1e-12, f"d{name}")


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.log_decay = torch.nn.Parameter(torch.full((4,), -0.1))
        self.proj = torch.nn.Linear(16, 3 * 16)

    def forward(self, x):
        q, k, v = self.proj(x).view(*x.shape[:2], 3, 4, 4).unbind(2)
        return lasp_fx.linear_attention(q, k, v, self.log_decay)


def test_export_keeps_one_node():
    ep = torch.export.export(_Layer(), (torch.randn(2, 50, 16),))
    assert len(_op_nodes(ep.graph_module)) == 1
    x = torch.randn(2, 50, 16)
    model = _Layer()
    ep = torch.export.export(model, (x,))
    assert_close_rms(ep.module()(x), model(x), 1e-6, "exported output")
