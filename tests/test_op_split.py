"""The primitives' LASP hook: a state handed back late by `state_hook` equals passing it in up front."""

import pytest
import torch

from lasp_fx.ops import chunked
from lasp_fx.numerics import assert_close_rms, random_inputs

SCALE = 0.4
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the Triton kernels: on the GPU, else the interpreter


def _inputs(decay, T=150):
    a = random_inputs(2, T, 6, 8, 5, kv_heads=3, decay=decay)
    s_in = torch.randn(2, 6, 8, 5, dtype=torch.float64)
    return a["q"], a["k"], a["v"], a.get("log_decay"), s_in


def _late(state, seen=None):
    """A hook that records the local state and hands `state` back late."""

    def hook(local):
        if seen is not None:
            seen.append(local.clone())
        return lambda: state

    return hook


@pytest.mark.parametrize("upfront", [False, True], ids=["late_only", "upfront_plus_late"])
@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_forward_late_state_equals_state_passed_in(decay, upfront):
    q, k, v, g, s_in = _inputs(decay)
    first = torch.randn_like(s_in) if upfront else None
    total = s_in if first is None else s_in + first
    o_full, s_full = chunked.fwd(q, k, v, g, SCALE, total, chunk_size=32)
    seen = []
    o, s_out = chunked.fwd(q, k, v, g, SCALE, first, state_hook=_late(s_in, seen), chunk_size=32)
    assert_close_rms(o, o_full, 1e-12, "o")
    assert_close_rms(s_out, s_full, 1e-12, "final state")
    _, s_local = chunked.fwd(q, k, v, g, SCALE, first, chunk_size=32)
    assert_close_rms(seen[0], s_local, 0.0, "state the hook saw")


@pytest.mark.parametrize("upfront", [False, True], ids=["late_only", "upfront_plus_late"])
@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_backward_late_gradient_equals_gradient_passed_in(decay, upfront):
    q, k, v, g, s_in = _inputs(decay)
    do = torch.randn(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    ds_late = torch.randn_like(s_in)
    first = torch.randn_like(s_in) if upfront else None
    total = ds_late if first is None else ds_late + first
    full = chunked.bwd(q, k, v, g, SCALE, do, s_in, total, chunk_size=32)
    seen = []
    got = chunked.bwd(q, k, v, g, SCALE, do, s_in, first, state_hook=_late(ds_late, seen), chunk_size=32)
    for name, a, b in zip(["dq", "dk", "dv", "dG", "ds_in"], got, full):
        if b is None:
            assert a is None, name
        else:
            assert_close_rms(a, b, 1e-12, name)
    *_, ds_local = chunked.bwd(q, k, v, g, SCALE, do, s_in, first, chunk_size=32)
    assert_close_rms(seen[0], ds_local, 0.0, "gradient the hook saw")


@pytest.mark.parametrize("returns", [None, lambda: None], ids=["hook_returns_none", "late_state_is_none"])
def test_hook_without_a_late_state_changes_nothing(returns):
    q, k, v, g, s_in = _inputs("gate")
    o_ref, s_ref = chunked.fwd(q, k, v, g, SCALE, s_in, chunk_size=32)
    o, s_out = chunked.fwd(q, k, v, g, SCALE, s_in, state_hook=lambda s: returns, chunk_size=32)
    assert_close_rms(o, o_ref, 0.0, "o")
    assert_close_rms(s_out, s_ref, 0.0, "final state")


def test_hook_returning_a_tensor_is_refused():
    q, k, v, g, s_in = _inputs("none")
    with pytest.raises(TypeError, match="callable giving the late state"):
        chunked.fwd(q, k, v, g, SCALE, None, state_hook=lambda s: s_in, chunk_size=32)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_exclusive_cumsum(reverse):
    a = torch.randn(3, 7, 2, dtype=torch.float64)
    got = chunked.exclusive_cumsum(a, dim=1, reverse=reverse)
    for n in range(7):
        idx = range(n + 1, 7) if reverse else range(n)
        want = sum((a[:, m] for m in idx), torch.zeros(3, 2, dtype=torch.float64))
        assert_close_rms(got[:, n], want, 1e-14, f"position {n}")


def _primitives():
    from lasp_fx.ops import triton as tk

    return [pytest.param(chunked, id="chunked"), pytest.param(tk, id="triton")]


@pytest.mark.parametrize("prims", _primitives())
def test_late_pair_gives_the_far_end_state_as_handed_back(prims):
    """A late callable giving (late state, far-end state) is taken at its word for the far end
    (the exchange computed that sum to send it on): a marker end comes back as s_out / ds_in,
    while o and the gradients still see the late state."""
    dev = "cpu" if prims is chunked else DEVICE
    q, k, v, g, s_in = (x.to(dev, torch.float32) if x is not None else None for x in _inputs("gate", T=130))
    marker = torch.randn_like(s_in)
    kw = dict(chunk_size=32) if prims is chunked else dict(nsub=2)
    o_full, _ = prims.fwd(q, k, v, g, SCALE, s_in, **kw)
    o, s_out = prims.fwd(q, k, v, g, SCALE, None, state_hook=lambda local: lambda: (s_in, marker), **kw)
    assert_close_rms(o, o_full, 1e-5, "o")
    assert torch.equal(s_out, marker), "final state is the pair's second half"
    do = torch.randn(*q.shape[:3], v.shape[-1]).to(dev)
    full = prims.bwd(q, k, v, g, SCALE, do, s_in, s_in, **kw)
    *grads, ds_in = prims.bwd(q, k, v, g, SCALE, do, s_in, None, state_hook=lambda local: lambda: (s_in, marker), **kw)
    for name, a, b in zip(["dq", "dk", "dv", "dG"], grads, full):
        assert_close_rms(a, b, 1e-4, name)
    assert torch.equal(ds_in, marker), "ds_in is the pair's second half"


@pytest.mark.parametrize("decay", ["none", "gate"])
@pytest.mark.parametrize("prims", _primitives())
def test_late_state_adds_to_an_incoming_state(prims, decay):
    """fwd(s_in=A) whose hook hands back B late computes fwd(s_in=A + B): both enter at the slice's
    start (the Triton kernels take both as late states of their segments)."""
    dev = "cpu" if prims is chunked else DEVICE
    q, k, v, g, s_in = (x.to(dev, torch.float32) if x is not None else None for x in _inputs(decay, T=130))
    late = torch.randn_like(s_in)
    kw = dict(chunk_size=32) if prims is chunked else dict(nsub=2)
    o_full, s_full = prims.fwd(q, k, v, g, SCALE, s_in + late, **kw)
    seen = {}

    def hook(local):
        seen["local"] = local.clone()
        return lambda: late

    o, s_out = prims.fwd(q, k, v, g, SCALE, s_in, state_hook=hook, **kw)
    assert_close_rms(o, o_full, 1e-5, "o")
    assert_close_rms(s_out, s_full, 1e-5, "final state")
    _, s_own = prims.fwd(q, k, v, g, SCALE, s_in, **kw)  # what the hook saw: the tokens and s_in, not the late state
    assert_close_rms(seen["local"], s_own, 1e-6, "state given to the hook")
