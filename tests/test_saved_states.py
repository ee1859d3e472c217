"""The backward reuses the forward's segment states (fwd(save=True) -> bwd(saved=...)): same gradients, one pass less."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")
pytest.importorskip("numpy", reason="Triton's CPU interpreter needs numpy")

import lasp_fx  # noqa: E402
from lasp_fx.ops import naive  # noqa: E402
from lasp_fx.ops import triton as tk  # noqa: E402
from lasp_fx.ops.triton import backward as tk_bwd  # noqa: E402
from lasp_fx.ops.triton.common import CHUNK, SAVED_CHUNKS  # noqa: E402
from lasp_fx.numerics import assert_close_rms, random_inputs  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = 0.37
TOL = {torch.float32: 2e-5, torch.float16: 3e-3}
# Two saved segments, the second cut mid-chunk; GQA (without decay the states are per kv head).
B, T, H, HK, D, E = 1, CHUNK * SAVED_CHUNKS + 70, 2, 1, 16, 16


def _inputs(decay, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(B, T, H, D, E, kv_heads=HK, decay=decay, initial_state=True, dtype=dtype, generator=gen)
    a = {name: x.to(DEVICE) for name, x in a.items()}
    do = torch.randn(B, T, H, E, generator=gen).to(DEVICE, dtype)
    ds_out = torch.randn(B, H, D, E, generator=gen).to(DEVICE)
    return a, do, ds_out


def _reference_grads(a, do, ds_out):
    leaves = {name: x.detach().double().requires_grad_() for name, x in a.items()}
    o, s = naive.quadratic_linear_attention(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("log_decay"),
        scale=SCALE, initial_state=leaves["initial_state"],
    )  # fmt: skip
    ((o * do.double()).sum() + (s * ds_out.double()).sum()).backward()
    return {name: x.grad for name, x in leaves.items()}


def _count_state_passes(monkeypatch) -> list:
    """Record each state pass the backward runs: False for the forward direction, True for the reverse."""
    passes, real = [], tk_bwd.segment_states
    monkeypatch.setattr(
        tk_bwd, "segment_states", lambda *args, **kw: passes.append(kw.get("reverse", False)) or real(*args, **kw)
    )
    return passes


# fp16 where the decay's gradient needs the states' 16-bit increments to match the backward's, fp32 exact
@pytest.mark.parametrize(
    "decay, dtype",
    [("none", torch.float32), ("const", torch.float32), ("const", torch.float16), ("gate", torch.float16)],
    ids=["none-fp32", "const-fp32", "const-fp16", "gate-fp16"],
)
def test_backward_reuses_the_saved_states(decay, dtype, monkeypatch):
    a, do, ds_out = _inputs(decay, dtype, seed=3 + len(decay))
    q, k, v, g, s_in = a["q"], a["k"], a["v"], a.get("log_decay"), a["initial_state"]
    o, s_out, states = tk.fwd(q, k, v, g, SCALE, s_in, nsub=SAVED_CHUNKS, save=True)
    # two segments, and the first one's entering state (zero) has no row
    assert states.shape == tk.saved_shape(q, v, g, HK) == (B, HK if g is None else H, 1, D, E)

    passes = _count_state_passes(monkeypatch)
    got = tk.bwd(q, k, v, g, SCALE, do, s_in, ds_out, nsub=SAVED_CHUNKS, saved=(states, s_out))
    assert passes == [True], "the backward ran the forward-direction state pass again"
    passes.clear()
    recomputed = tk.bwd(q, k, v, g, SCALE, do, s_in, ds_out, nsub=SAVED_CHUNKS)
    assert passes == [False, True]

    ref = _reference_grads(a, do, ds_out)
    names = ["q", "k", "v", "log_decay", "initial_state"]
    for name, x, y in zip(names, got, recomputed):
        if name == "log_decay":
            if g is None:
                assert x is None and y is None
                continue
            x, y = tk.log_decay_grad(x, g), tk.log_decay_grad(y, g)
        # the same states, formed as the backward's state pass forms them: the same numbers
        assert_close_rms(x, y, 1e-6, f"d{name} saved vs recomputed")
        # a constant decay's gradient sums every token's share, with heavy cancellation: fp32 reaches
        # 2e-4 here at T = 2118 (the same before the states were saved)
        assert_close_rms(x, ref[name], max(TOL[dtype], 5e-4) if name == "log_decay" else TOL[dtype], f"d{name}")


def test_other_segment_lengths_leave_the_saved_tensor_unused(monkeypatch):
    """Segments of another length than SAVED_CHUNKS: fwd returns an empty tensor of the same shape, bwd recomputes."""
    a, do, ds_out = _inputs("gate", torch.float32, seed=9)
    q, k, v, g, s_in = a["q"], a["k"], a["v"], a["log_decay"], a["initial_state"]
    _, s_out, states = tk.fwd(q, k, v, g, SCALE, s_in, nsub=4, save=True)
    assert states.shape == tk.saved_shape(q, v, g, HK)
    assert tk.saved_shape(q[:, : CHUNK * SAVED_CHUNKS], v, g, HK)[2] == 0  # one segment or less: no memory held
    passes = _count_state_passes(monkeypatch)
    dq, dk, dv, dG, ds_in = tk.bwd(q, k, v, g, SCALE, do, s_in, ds_out, nsub=4, saved=(states, s_out))
    assert passes == [False, True]
    ref = _reference_grads(a, do, ds_out)
    for name, x in (("q", dq), ("k", dk), ("v", dv), ("initial_state", ds_in)):
        assert_close_rms(x, ref[name], TOL[torch.float32], f"d{name}")
    assert_close_rms(tk.log_decay_grad(dG, g), ref["log_decay"], 1e-4, "dlog_decay")


def _op_inputs(learnable: bool):
    gen = torch.Generator().manual_seed(2)
    a = random_inputs(1, T, 2, D, E, kv_heads=1, decay="gate", dtype=torch.float16, generator=gen)
    a = {name: x.to(DEVICE) for name, x in a.items()}
    a["log_decay"].requires_grad_(learnable)
    for name in "qkv":
        a[name].requires_grad_()
    return a, torch.randn(1, T, 2, E, generator=gen).to(DEVICE, torch.float16)


@pytest.mark.parametrize(
    "entry, learnable, expected_passes",
    [
        ("public", True, [True]),  # a learnable decay: its gradient through the reused states
        ("public", False, [True]),  # a fixed decay
        ("custom_op", True, [True]),  # the registered op, as graphs call it
    ],
    ids=["learnable_decay", "fixed_decay", "custom_op"],
)
def test_op_reuses_states_kept_for_its_backward(entry, learnable, expected_passes, monkeypatch):
    """Through the op, with the Triton kernels on the interpreter: which state passes its backward runs."""
    from lasp_fx.ops import op as op_module
    from lasp_fx.ops.triton import forward as tk_fwd

    monkeypatch.setattr(op_module, "kernels_for", lambda x: tk)  # CPU tensors take the Triton kernels here too
    for module in (tk_fwd, tk_bwd):  # the segment length the GPUs pick from ~16K tokens per head up
        monkeypatch.setattr(module, "segment_chunks", lambda n_chunks, bh, device: SAVED_CHUNKS)
    a, do = _op_inputs(learnable)
    leaves = [a["q"], a["k"], a["v"]] + ([a["log_decay"]] if learnable else [])
    if entry == "public":
        o = lasp_fx.linear_attention(a["q"], a["k"], a["v"], a["log_decay"], scale=SCALE)
    else:
        op = torch.ops.lasp_fx.linear_attention
        o, _, _ = op(a["q"], a["k"], a["v"], a["log_decay"], None, SCALE)
    passes = _count_state_passes(monkeypatch)
    grads = torch.autograd.grad((o.float() * do.float()).sum(), leaves)
    assert passes == expected_passes

    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    g_ref = ref_leaves[3] if learnable else a["log_decay"].detach().double()
    ref_o, _ = naive.quadratic_linear_attention(*ref_leaves[:3], g_ref, scale=SCALE)
    ref = torch.autograd.grad((ref_o * do.double()).sum(), ref_leaves)
    for name, x, y in zip("qkvg", grads, ref):
        assert_close_rms(x, y, 1e-3 if name == "g" else TOL[torch.float16], f"d{name}")


def test_forward_state_pass_takes_no_incoming_state():
    """Forward-direction states have no row for segment 0 (zero): an incoming state must enter late."""
    from lasp_fx.ops.triton.states import segment_states

    k = torch.randn(1, 100, 1, 16, device=DEVICE)
    S, _, _ = segment_states(k, k, 0, None, 1, 1)
    assert S.shape == (1, 1, 1, 16, 16)  # two segments of one chunk: one row
    with pytest.raises(ValueError, match="late state"):
        segment_states(k, k, 0, None, 1, 1, torch.zeros(1, 1, 16, 16, device=DEVICE))
