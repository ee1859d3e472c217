"""Capture, on every device: both routes give the same detections; failures carry the source line and a hint."""

import pytest
import torch
from torch import nn

from lasp_fx.capture import CaptureError, capture, capture_dynamo_graph
from lasp_fx.passes import convert_captured, rewrite_linear_attention
from lasp_fx.numerics import assert_close_rms
from tests.corpus import CORPUS, DIM
from tests.corpus.harness import converted


class DataDependentBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value
            return self.proj(x)
        return x


@pytest.mark.parametrize("method", ["export", "dynamo"])
def test_capture_error_names_the_line_and_a_hint(method, device):
    with pytest.raises(CaptureError) as info:
        capture(DataDependentBranch().to(device), torch.randn(2, 5, DIM).to(device), method=method)
    err = info.value
    assert err.source is not None and err.source.endswith(f"test_capture.py:{_line_of('if x.sum() > 0')}")
    assert "x.sum() > 0" in err.code and "torch.where" in err.hint
    assert err.source in str(err)


def _line_of(text):
    with open(__file__) as f:
        return next(i for i, line in enumerate(f, 1) if text in line and "_line_of" not in line)


@pytest.mark.parametrize("name", ["einsum_tril_heads_dim2", "gate_log_cumsum", "cumsum_einsum_normalised",
                                  "gqa_expand_reshape", "hybrid_linear_softmax"])
def test_dynamo_route_finds_the_same(name, device):
    model, _, report, x = converted(name, device)
    gm, rep = convert_captured(capture(model, x, method="dynamo"))
    strip = lambda ms: [(m.family, m.decay, m.source, m.kv_heads) for m in ms]  # noqa: E731
    assert strip(rep.matches) == strip(report.matches)
    assert [m.scale for m in rep.matches] == pytest.approx([m.scale for m in report.matches], rel=1e-9)
    assert [n.family for n in rep.near_misses] == [n.family for n in report.near_misses]


@pytest.mark.parametrize("name", ["retnet_pow_buffer", "cumsum_einsum_normalised"])
def test_backend_rewrite_keeps_the_sequence_length_symbolic(name, device):
    torch._dynamo.reset()
    model = CORPUS[name][0]().double().to(device)
    reports = []

    def backend(gm, example_inputs):
        g = rewrite_linear_attention(capture_dynamo_graph(gm, example_inputs), example_inputs)
        reports.append(g.meta["lasp_fx_report"])
        return g.forward

    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for t in (11, 17):  # the second length reuses the rewritten graph
        x = torch.randn(2, t, DIM, dtype=torch.float64).to(device)
        torch._dynamo.mark_dynamic(x, 1, min=2, max=60)
        assert_close_rms(compiled(x), model(x), 1e-10, f"{name} T={t}")
    assert len(reports) == 1 and [m.family for m in reports[0].matches] == [CORPUS[name][1][0][0]]


def test_dynamo_graph_is_functional_and_keeps_source_lines(device):
    class InPlace(nn.Module):
        def forward(self, q, k, v):
            s = q @ k.transpose(-1, -2)
            s.tril_()
            s.mul_(0.5)
            return s @ v

    q, k, v = (torch.randn(2, 3, 7, 4).to(device) for _ in range(3))
    cap = capture(InPlace(), q, k, v, method="dynamo")
    targets = [str(n.target) for n in cap.gm.graph.nodes if n.op == "call_function"]
    assert not any(t.endswith("_.default") or t.endswith("_.Tensor") for t in targets), targets
    assert all("test_capture.py" in (n.meta.get("stack_trace") or "") for n in cap.gm.graph.nodes
               if n.op == "call_function")
    gm, rep = convert_captured(cap)
    assert [(m.family, m.scale) for m in rep.matches] == [("quadratic", 0.5)]


def test_public_inspect(device):
    import lasp_fx

    model = CORPUS["retnet_pow_buffer"][0]().to(device)
    report = lasp_fx.inspect(model, torch.randn(1, 9, DIM).to(device))
    assert [m.decay for m in report.matches] == ["const"]
    assert report.matches[0].source.startswith("tests/corpus/decay_masks.py:")
