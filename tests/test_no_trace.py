"""inspect() leaves no trace: the model called eagerly afterwards gives the same outputs (issue 20)."""

import functools

import torch
from torch import nn

import lasp_fx
from tests.corpus.common import Projections


@functools.lru_cache(maxsize=8)
def _causal(t: int, dtype=torch.float64):
    """A module-level cache keyed by the length, as research code writes position tables."""
    return torch.tril(torch.ones(t, t, dtype=dtype))


class CachedMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = Projections(32, 4)

    def forward(self, x):
        q, k, v = (t.transpose(1, 2) for t in self.p.split(x))
        s = (q @ k.transpose(-1, -2)) * _causal(x.shape[1], x.dtype)
        return self.p.merge((s @ v).transpose(1, 2))


def test_inspect_leaves_no_fake_tensor_in_a_module_cache():
    torch.manual_seed(0)
    model = CachedMask().double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    before = model(x)
    _causal.cache_clear()  # the capture is the first caller: it would cache what it traced with
    report = lasp_fx.inspect(model, x)
    assert len(report.matches) == 1, report
    after = model(x)  # a cached FakeTensor would raise or differ here
    assert not isinstance(_causal(9, torch.float64), torch._subclasses.FakeTensor)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


class StepCounter(CachedMask):
    """A buffer the forward increments (performer-pytorch's redraw counter)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.tensor(0))

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_inspect_leaves_buffers_as_they_were():
    torch.manual_seed(0)
    model = StepCounter().double()
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    lasp_fx.inspect(model, x)  # the float64 replays run the counter's add_ on copies
    assert int(model.calls) == 0
