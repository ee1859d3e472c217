"""The primitives' LASP split: local work + a late state correction equals one call with the state."""

import pytest
import torch

from lasp_fx.ops import chunked
from lasp_fx.testing.numerics import assert_close_rms, random_inputs


def _inputs(decay, T=150, chunk_size=32):
    a = random_inputs(2, T, 6, 8, 5, kv_heads=3, decay=decay)
    s_in = torch.randn(2, 6, 8, 5, dtype=torch.float64)
    return a["q"], a["k"], a["v"], a.get("log_decay"), s_in


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_forward_split(decay):
    q, k, v, g, s_in = _inputs(decay)
    o_full, s_full = chunked.fwd(q, k, v, g, 0.4, s_in, chunk_size=32)
    o_loc, s_loc = chunked.fwd(q, k, v, g, 0.4, None, chunk_size=32)
    assert_close_rms(chunked.fwd_correct(o_loc, q, g, 0.4, s_in), o_full, 1e-12, "o")
    G = chunked.slice_cumdecay(g, 2, q.shape[1], 6, torch.float64)
    decay_total = 1.0 if G is None else torch.exp(G[:, -1])[..., None, None]
    assert_close_rms(decay_total * s_in + s_loc, s_full, 1e-12, "final state")


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_backward_split(decay):
    q, k, v, g, s_in = _inputs(decay)
    do = torch.randn(*q.shape[:3], v.shape[-1], dtype=torch.float64)
    ds_out = torch.randn_like(s_in)
    _, s_out = chunked.fwd(q, k, v, g, 0.4, s_in, chunk_size=32)
    full = chunked.bwd(q, k, v, g, 0.4, do, s_in, ds_out, chunk_size=32)
    dq, dk, dv, dG, ds_loc = chunked.bwd(q, k, v, g, 0.4, do, s_in, None, chunk_size=32)
    dk, dv, dG = chunked.bwd_correct(dk, dv, dG, k, v, g, ds_out, s_out)
    G = chunked.slice_cumdecay(g, 2, q.shape[1], 6, torch.float64)
    decay_total = 1.0 if G is None else torch.exp(G[:, -1])[..., None, None]
    for name, a, b in zip(["dq", "dk", "dv"], (dq, dk, dv), full[:3]):
        assert_close_rms(a, b, 1e-12, name)
    assert_close_rms(ds_loc + decay_total * ds_out, full[4], 1e-12, "ds_in")
    if g is None:
        assert dG is None and full[3] is None
    else:
        assert_close_rms(dG, full[3], 1e-12, "dG")


def test_state_hook_sees_the_final_state_before_outputs_exist():
    q, k, v, g, s_in = _inputs("gate")
    seen = []
    o, s_out = chunked.fwd(q, k, v, g, 0.4, s_in, state_hook=lambda s: seen.append(s.clone()), chunk_size=32)
    assert len(seen) == 1
    assert_close_rms(seen[0], s_out, 0.0, "hooked state")
    do = torch.randn_like(o)
    seen.clear()
    *_, ds_in = chunked.bwd(q, k, v, g, 0.4, do, s_in, None, state_hook=seen.append, chunk_size=32)
    assert len(seen) == 1 and seen[0] is ds_in
