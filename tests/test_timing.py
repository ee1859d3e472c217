"""lasp_fx.cli.timing: what the timers call and when, the inputs they time, the floors they compare with."""

import pytest
import torch

from lasp_fx.cli import timing


def _counting():
    calls = []
    return calls, lambda: calls.append("fn"), lambda: calls.append("before")


def test_median_ms_warms_up_then_times_each_call_after_before():
    calls, fn, before = _counting()
    ms = timing.median_ms(fn, "cpu", warmup=2, reps=3, before=before)
    assert calls == ["fn", "fn"] + ["before", "fn"] * 3
    assert ms >= 0


def test_loop_and_host_ms_on_cpu():
    calls, fn, before = _counting()
    timing.loop_ms(fn, "cpu", 4, before=before)
    assert calls == ["before"] + ["fn"] * 4
    calls.clear()
    timing.host_ms(fn, "cpu", 3, warmup=1)  # no GPU to keep busy: the plain median
    assert calls == ["fn"] * 4


def test_median_ms_is_the_median():
    times = iter([0.0, 0.010, 1.0, 1.001, 2.0, 2.150])  # perf_counter around calls of 10, 1 and 150 ms
    real = timing.time.perf_counter
    timing.time.perf_counter = lambda: next(times)
    try:
        assert timing.median_ms(lambda: None, "cpu", warmup=0, reps=3) == pytest.approx(10.0)
    finally:
        timing.time.perf_counter = real


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_inputs(decay, dtype):
    x = timing.inputs(7, 3, 4, decay, dtype, batch=2, seed=5, value_dim=6)
    assert {n: tuple(x[n].shape) for n in "qkv"} == {"q": (2, 7, 3, 4), "k": (2, 7, 3, 4), "v": (2, 7, 3, 6)}
    assert x["do"].shape == (2, 7, 3, 6) and all(x[n].dtype == dtype for n in ("q", "k", "v", "do"))
    again = timing.inputs(7, 3, 4, decay, dtype, batch=2, seed=5, value_dim=6)
    assert all(torch.equal(x[n], again[n]) for n in ("q", "k", "v", "do"))
    g = x["g"]
    if decay == "none":
        assert g is None
        return
    assert g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert (g < 0).all()
    if decay == "const":
        assert torch.allclose(g.double(), -timing.slopes(3).double())
    else:
        assert g.shape == (2, 7, 3)


def test_inputs_refuses_an_unknown_decay():
    with pytest.raises(ValueError, match="use none, const or gate"):
        timing.inputs(4, 2, 2, "linear")


def test_floors():
    B, T, H, D = 1, 100, 2, 8
    flops = B * T * H * (2 * timing.CHUNK * 2 * D + 4 * D * D)
    assert timing.chunked_flops(B, T, H, D) == flops
    n = B * T * H
    assert timing.floors(B, T, H, D, gate=False) == {"fwd": (2 * n * 4 * D, flops), "fwdbwd": (2 * n * 8 * D, 3 * flops)}
    gated = timing.floors(B, T, H, D, gate=True)
    assert gated["fwd"][0] == 2 * n * 4 * D + 4 * n and gated["fwdbwd"][0] == 2 * n * 8 * D + 12 * n


def test_step_clears_gradients_before_each_backward():
    w = torch.ones(3, requires_grad=True)
    run = timing.step(lambda: w * 2, [w], torch.ones(3))
    run()
    run()
    assert torch.equal(w.grad, torch.full((3,), 2.0))  # not 4: the first step's gradient was cleared
