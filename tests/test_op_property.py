"""Property test: any small shape, decay form and scale gives the reference's output and gradients."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lasp_fx
from lasp_fx.ops import naive
from lasp_fx.numerics import assert_close_rms, random_inputs


@st.composite
def _cases(draw):
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    return dict(
        B=draw(st.integers(1, 2)),
        T=draw(st.integers(1, 150)),
        H=heads,
        kv_heads=kv_heads,
        D=draw(st.integers(1, 12)),
        E=draw(st.integers(1, 12)),
        decay=draw(st.sampled_from(["none", "const", "gate"])),
        initial_state=draw(st.booleans()),
        scale=draw(st.floats(0.05, 2.0)),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=30, deadline=None)
@given(_cases())
def test_any_shape_matches_the_recurrence(case):
    gen = torch.Generator().manual_seed(case["seed"])
    args = random_inputs(
        case["B"], case["T"], case["H"], case["D"], case["E"], kv_heads=case["kv_heads"],
        decay=case["decay"], initial_state=case["initial_state"], generator=gen,
    )
    for a in args.values():
        a.requires_grad_()
    o, s = lasp_fx.linear_attention(**args, scale=case["scale"], output_final_state=True)
    o_ref, s_ref = naive.recurrent_linear_attention(**args, scale=case["scale"])
    assert_close_rms(o, o_ref, 1e-10, "o")
    assert_close_rms(s, s_ref, 1e-10, "final state")
    do, ds = torch.randn_like(o), torch.randn_like(s)
    g = torch.autograd.grad((o * do).sum() + (s * ds).sum(), list(args.values()))
    g_ref = torch.autograd.grad((o_ref * do).sum() + (s_ref * ds).sum(), list(args.values()))
    for name, a, b in zip(args, g, g_ref):
        assert_close_rms(a, b, 1e-10, f"d{name}")
