"""lasp_fx.linear_attention against the float64 reference: outputs, every gradient, every form."""

import pytest
import torch

import lasp_fx
from lasp_fx.ops import naive
from lasp_fx.numerics import assert_close_rms, random_inputs

# Shapes: T not a multiple of the chunk (64), D != E, GQA with 2 and 1 kv heads.
SHAPES = {
    "T1": (2, 1, 4, 4, 16, 8),
    "T63": (1, 63, 4, 4, 16, 16),
    "T65-gqa2": (2, 65, 8, 2, 12, 20),
    "T257-mqa": (1, 257, 8, 1, 16, 8),
    "T130-D7E5": (2, 130, 3, 3, 7, 5),
}
# Bounds on the relative RMS error against float64, for outputs and gradients. Low precision
# inputs are rounded first, so the bound covers the kernel's rounding, not the inputs'.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _run(fn, args, scale, do, ds):
    """Output, final state and the gradients of every input that requires grad."""
    o, s = fn(**args, scale=scale)
    loss = (o.double() * do).sum() + (s.double() * ds).sum()
    grads = torch.autograd.grad(loss, list(args.values()))
    return o, s, dict(zip(args, grads))


def _public(**kw):
    return lasp_fx.linear_attention(**kw, output_final_state=True)


def _reference(args, scale, do, ds):
    ref_args = {n: a.detach().double().requires_grad_() for n, a in args.items()}
    return _run(naive.quadratic_linear_attention, ref_args, scale, do, ds)


def _check_against_reference(args, scale, tol):
    for a in args.values():
        a.requires_grad_()
    B, T, H, _ = args["q"].shape
    D, E = args["q"].shape[-1], args["v"].shape[-1]
    do = torch.randn(B, T, H, E, dtype=torch.float64)
    ds = torch.randn(B, H, D, E, dtype=torch.float64)
    o, s, grads = _run(_public, args, scale, do, ds)
    o_ref, s_ref, grads_ref = _reference(args, scale, do, ds)
    assert o.dtype == args["q"].dtype and o.shape == (B, T, H, E)
    assert s.dtype == (torch.float64 if o.dtype == torch.float64 else torch.float32)
    assert_close_rms(o, o_ref, tol, "o")
    assert_close_rms(s, s_ref, tol, "final state")
    for name in args:
        assert grads[name].dtype == args[name].dtype, name
        assert_close_rms(grads[name], grads_ref[name], tol, f"d{name}")


@pytest.mark.parametrize("initial_state", [False, True], ids=["no-state", "state-in"])
@pytest.mark.parametrize("decay", ["none", "const", "gate"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_float64_matches_reference(shape, decay, initial_state):
    B, T, H, Hk, D, E = shape
    args = random_inputs(B, T, H, D, E, kv_heads=Hk, decay=decay, initial_state=initial_state)
    _check_against_reference(args, 0.37, TOLERANCE[torch.float64])


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_within_documented_bounds(dtype, decay):
    args = random_inputs(2, 100, 4, 16, 16, kv_heads=2, decay=decay, initial_state=True, dtype=dtype)
    _check_against_reference(args, None, TOLERANCE[dtype])


def test_default_scale_is_inverse_sqrt_head_dim():
    args = random_inputs(1, 20, 2, 9, 4)
    o = lasp_fx.linear_attention(**args)
    o_ref, _ = naive.recurrent_linear_attention(**args, scale=9**-0.5)
    assert_close_rms(o, o_ref, 1e-12, "o")


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_three_pieces_with_carried_state_equal_one_call(decay):
    # Cuts mid-chunk, one of them a single token: the state carries everything across.
    args = random_inputs(2, 200, 4, 8, 6, kv_heads=2, decay=decay)
    for a in args.values():
        a.requires_grad_()
    do = torch.randn(2, 200, 4, 6, dtype=torch.float64)
    whole = lasp_fx.linear_attention(**args)
    grads_whole = torch.autograd.grad((whole * do).sum(), list(args.values()))
    state, pieces = None, []
    for lo, hi in [(0, 70), (70, 71), (71, 200)]:
        part = {n: (a[:, lo:hi] if a.dim() >= 3 else a) for n, a in args.items()}  # [H] stays whole
        o, state = lasp_fx.linear_attention(**part, initial_state=state, output_final_state=True)
        pieces.append(o)
    joined = torch.cat(pieces, dim=1)
    assert_close_rms(joined, whole, 1e-12, "o")
    grads_pieces = torch.autograd.grad((joined * do).sum(), list(args.values()))
    for name, a, b in zip(args, grads_pieces, grads_whole):
        assert_close_rms(a, b, 1e-12, f"d{name}")


def test_only_final_state_used_and_expanded_output_grad():
    args = random_inputs(1, 30, 2, 4, 4, decay="gate")
    for a in args.values():
        a.requires_grad_()
    _, s = lasp_fx.linear_attention(**args, output_final_state=True)
    g = torch.autograd.grad(s.sum(), list(args.values()))
    _, s_ref = naive.recurrent_linear_attention(**args, scale=0.5)
    g_ref = torch.autograd.grad(s_ref.sum(), list(args.values()), allow_unused=True)
    assert g[0].abs().max() == 0  # q does not reach the state
    for name, a, b in list(zip(args, g, g_ref))[1:]:
        assert_close_rms(a, b, 1e-12, f"d{name}")
    # o.sum() gives a stride-0 gradient: kernels must not read it as contiguous.
    o = lasp_fx.linear_attention(**args)
    g = torch.autograd.grad(o.sum(), list(args.values()))
    o_ref, _ = naive.recurrent_linear_attention(**args, scale=0.5)
    g_ref = torch.autograd.grad(o_ref.sum(), list(args.values()))
    for name, a, b in zip(args, g, g_ref):
        assert_close_rms(a, b, 1e-12, f"d{name}")


@pytest.mark.parametrize("decay", ["const", "gate"])
def test_decay_buffer_gets_no_gradient_and_the_rest_is_unchanged(decay):
    """A decay that does not require grad (RetNet's fixed gammas) is skipped by the backward, nothing else."""
    args = random_inputs(2, 77, 4, 8, 6, kv_heads=2, decay=decay, initial_state=True)
    fixed = {n: a.detach().clone().requires_grad_(n != "log_decay") for n, a in args.items()}
    for a in args.values():
        a.requires_grad_()
    do = torch.randn(2, 77, 4, 6, dtype=torch.float64)
    grads = torch.autograd.grad((lasp_fx.linear_attention(**args) * do).sum(), list(args.values()))
    inputs = [a for a in fixed.values() if a.requires_grad]
    grads_fixed = torch.autograd.grad((lasp_fx.linear_attention(**fixed) * do).sum(), inputs)
    names = [n for n in args if n != "log_decay"]
    assert len(grads_fixed) == len(names) and fixed["log_decay"].grad is None
    for name, got in zip(names, grads_fixed):
        assert_close_rms(got, grads[list(args).index(name)], 1e-12, f"d{name}")


def test_torch_func_grad_matches_reference():
    """Eager calls run an autograd.Function with setup_context: functorch's grad transform works."""
    args = random_inputs(1, 45, 2, 4, 6, decay="gate", initial_state=True)
    names = list(args)

    def loss(fn, *xs):
        kw = dict(zip(names, xs))
        out = fn(**kw, scale=0.4)
        return (out[0] if isinstance(out, tuple) else out).square().sum()

    ours = torch.func.grad(lambda *xs: loss(lasp_fx.linear_attention, *xs), argnums=tuple(range(len(names))))
    ref = torch.func.grad(lambda *xs: loss(naive.quadratic_linear_attention, *xs), argnums=tuple(range(len(names))))
    for name, a, b in zip(names, ours(*args.values()), ref(*args.values())):
        assert_close_rms(a, b, 1e-10, f"d{name}")
