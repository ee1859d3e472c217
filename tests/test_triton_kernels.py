"""The Triton primitives against the float64 reference (CPU interpreter in CI, the GPU where there is one)."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: the Triton kernels cannot be tested")
pytest.importorskip("numpy", reason="Triton's CPU interpreter needs numpy")

from lasp_fx.ops import chunked, naive  # noqa: E402
from lasp_fx.ops import triton as tk  # noqa: E402
from lasp_fx.ops.triton import backward as tk_bwd  # noqa: E402
from lasp_fx.ops.triton import forward as tk_fwd  # noqa: E402
from lasp_fx.numerics import assert_close_rms, random_inputs, rel_rms  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 2e-5, torch.float16: 3e-3}  # fp32 is exact here; fp16 rounds inputs to the dots
SCALE = 0.37

# (B, T, H, H_kv, D, E, chunks per segment): T mid-chunk, odd D and E, GQA, several segments.
SHAPES = {
    "mha_2seg": (1, 150, 2, 2, 16, 32, 2),
    "gqa_odd": (2, 131, 4, 2, 24, 20, 1),
    "mqa_short": (1, 37, 3, 1, 16, 16, 4),
    "wide_d": (1, 100, 2, 1, 72, 24, 1),  # two D tiles: dG summed over tile partials
    "many_seg": (1, 1990, 2, 1, 16, 16, 1),  # 32 segments: the scan runs in steps of 15 (states.py)
}


def _inputs(shape, decay, initial_state, dtype, seed):
    B, T, H, Hk, D, E, nsub = SHAPES[shape]
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(B, T, H, D, E, kv_heads=Hk, decay=decay, initial_state=initial_state, dtype=dtype, generator=gen)
    a = {name: x.to(DEVICE) for name, x in a.items()}
    do = torch.randn(B, T, H, E, generator=gen).to(DEVICE, dtype)
    ds_out = torch.randn(B, H, D, E, generator=gen).to(DEVICE) if initial_state else None
    return a, do, ds_out, nsub


def _reference(a, do, ds_out):
    """float64 autograd through the quadratic form: o, final state and every input gradient."""
    leaves = {name: x.detach().double().requires_grad_() for name, x in a.items()}
    o, s = naive.quadratic_linear_attention(
        leaves["q"], leaves["k"], leaves["v"], leaves.get("log_decay"),
        scale=SCALE, initial_state=leaves.get("initial_state"),
    )  # fmt: skip
    loss = (o * do.double()).sum() + (0 if ds_out is None else (s * ds_out.double()).sum())
    loss.backward()
    return o.detach(), s.detach(), {name: x.grad for name, x in leaves.items()}


# Every shape in fp32; fp16 (16-bit dot operands) on one shape to keep the interpreter's time down.
SHAPE_DTYPES = [pytest.param(s, torch.float32, id=f"{s}-fp32") for s in SHAPES] + [
    pytest.param("gqa_odd", torch.float16, id="gqa_odd-fp16")
]


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero_state", "state_in_out"])
@pytest.mark.parametrize("decay", ["none", "const", "gate"])
@pytest.mark.parametrize("shape, dtype", SHAPE_DTYPES)
def test_fwd_bwd_match_reference(shape, dtype, decay, initial_state):
    a, do, ds_out, nsub = _inputs(shape, decay, initial_state, dtype, seed=len(shape) * 7 + len(decay))
    g, s_in = a.get("log_decay"), a.get("initial_state")
    ref_o, ref_s, ref_grad = _reference(a, do, ds_out)
    tol = TOL[dtype]

    o, s_out = tk.fwd(a["q"], a["k"], a["v"], g, SCALE, s_in, nsub=nsub)
    assert o.dtype == dtype and s_out.dtype == torch.float32
    assert_close_rms(o, ref_o, tol, "o")
    assert_close_rms(s_out, ref_s, tol, "final state")

    dq, dk, dv, dG, ds_in = tk.bwd(a["q"], a["k"], a["v"], g, SCALE, do, s_in, ds_out, nsub=nsub)
    assert (dq.dtype, dk.dtype, dv.dtype) == (dtype, dtype, dtype)
    assert_close_rms(dq, ref_grad["q"], tol, "dq")
    assert_close_rms(dk, ref_grad["k"], tol, "dk")
    assert_close_rms(dv, ref_grad["v"], tol, "dv")
    if g is None:
        assert dG is None
    else:
        # a sum of q.dq - k.dk over T with heavy cancellation: fp32 reaches ~3e-5 at T = 2000
        dtol = max(tol, 1e-4) if a["q"].shape[1] > 1000 else tol
        assert_close_rms(tk.log_decay_grad(dG, g), ref_grad["log_decay"], dtol, "decay gradient")
    if s_in is not None:
        assert_close_rms(ds_in, ref_grad["initial_state"], tol, "d initial state")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("decay", ["const", "gate"])
def test_fixed_decay_skips_its_gradient(decay, dtype):
    """decay_grad=False (a decay buffer): the kernels without dG and what only it needs give the same dq, dk, dv."""
    a, do, ds_out, nsub = _inputs("gqa_odd", decay, True, dtype, seed=5)
    _, _, ref_grad = _reference(a, do, ds_out)
    args = (a["q"], a["k"], a["v"], a["log_decay"], SCALE, do, a["initial_state"], ds_out)
    dq, dk, dv, dG, ds_in = tk.bwd(*args, nsub=nsub, decay_grad=False)
    assert dG is None
    for name, got in (("q", dq), ("k", dk), ("v", dv), ("initial_state", ds_in)):
        assert_close_rms(got, ref_grad[name], TOL[dtype], f"d{name}")
    *_, dG_chunked, _ = chunked.bwd(*args, decay_grad=False)
    assert dG_chunked is None


@pytest.mark.parametrize("nsub", [1, 3, None], ids=["seg1", "seg3", "auto"])
def test_segment_length_does_not_change_the_function(nsub):
    a, do, ds_out, _ = _inputs("mha_2seg", "gate", True, torch.float32, seed=11)
    ref_o, _, ref_grad = _reference(a, do, ds_out)
    o, _ = tk.fwd(a["q"], a["k"], a["v"], a["log_decay"], SCALE, a["initial_state"], nsub=nsub)
    dq, dk, _, dG, _ = tk.bwd(a["q"], a["k"], a["v"], a["log_decay"], SCALE, do, a["initial_state"], ds_out, nsub=nsub)
    assert_close_rms(o, ref_o, 2e-5, "o")
    assert_close_rms(dq, ref_grad["q"], 2e-5, "dq")
    assert_close_rms(dk, ref_grad["k"], 2e-5, "dk")
    assert_close_rms(tk.log_decay_grad(dG, a["log_decay"]), ref_grad["log_decay"], 1e-4, "decay gradient")




@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("decay", ["none", "const", "gate"])
def test_late_states_folded_in_match_reference(decay, dtype):
    """fwd(None) with s_in handed back by the hook and bwd(ds_out=None) with ds_out handed back
    late give the full function: the late state enters the segment states of the output kernels."""
    a, do, ds_out, nsub = _inputs("gqa_odd", decay, True, dtype, seed=5)
    q, k, v, g, s_in = a["q"], a["k"], a["v"], a.get("log_decay"), a["initial_state"]
    ref_o, ref_s, ref_grad = _reference(a, do, ds_out)
    _, _, ref_local = _reference(a, do, None)
    tol = TOL[dtype]
    seen = {}

    def late(name, state):
        def hook(local):
            seen[name] = local.clone()
            return lambda: state

        return hook

    o, s_out = tk.fwd(q, k, v, g, SCALE, None, state_hook=late("fwd", s_in), nsub=nsub)
    assert_close_rms(o, ref_o, tol, "o with the late state")
    assert_close_rms(s_out, ref_s, tol, "final state with the late state")
    _, s_local = tk.fwd(q, k, v, g, SCALE, None, nsub=nsub)
    assert_close_rms(seen["fwd"], s_local, 0.0, "state the forward hook saw")

    dq, dk, dv, dG, ds_in = tk.bwd(q, k, v, g, SCALE, do, s_in, None, state_hook=late("bwd", ds_out), nsub=nsub)
    assert_close_rms(dq, ref_grad["q"], tol, "dq")
    assert_close_rms(dk, ref_grad["k"], tol, "dk with the late gradient")
    assert_close_rms(dv, ref_grad["v"], tol, "dv with the late gradient")
    assert_close_rms(ds_in, ref_grad["initial_state"], tol, "d initial state with the late gradient")
    if g is not None:
        assert_close_rms(tk.log_decay_grad(dG, g), ref_grad["log_decay"], tol, "decay gradient with the late gradient")
    # what the hook saw is the slice's own share: LASP adds exp(G_T) ds_out across ranks
    assert_close_rms(seen["bwd"], ref_local["initial_state"], tol, "d initial state the backward hook saw")


@pytest.mark.parametrize("T, strength", [(600, 1.0), (1500, 0.02)], ids=["T600", "T1500_weak"])
@pytest.mark.parametrize("decay", ["const", "gate"])
def test_decay_gradient_is_as_accurate_as_dq_with_16_bit_inputs(decay, T, strength):
    """The decay gradient sums q.dq - k.dk over the sequence, in which the pairs after each token
    cancel. Unless both sides see those pairs as the same numbers (backward.py), its error is many
    times dq's and grows with T. Weak decays (x 0.02) keep pairs hundreds of tokens apart, across
    segments. Measured here: the kernels 0.24-1.0x dq's error; without the state's low half in the
    products through it 1.9-22x; with the reverse state pass weighting tokens from the segment's
    start (other 16-bit operands than the dk kernel's) 2.0-2.5x on the weak decays."""
    gen = torch.Generator().manual_seed(21)
    a = random_inputs(1, T, 4, 32, 32, decay=decay, dtype=torch.float16, generator=gen)
    a["log_decay"] = a["log_decay"] * strength
    a = {name: x.to(DEVICE) for name, x in a.items()}
    do = torch.randn(1, T, 4, 32, generator=gen).to(DEVICE, torch.float16)
    _, _, ref_grad = _reference(a, do, None)
    dq, _, _, dG, _ = tk.bwd(a["q"], a["k"], a["v"], a["log_decay"], SCALE, do, nsub=2)
    dq_err = rel_rms(dq, ref_grad["q"])
    assert dq_err < 1e-3
    assert_close_rms(tk.log_decay_grad(dG, a["log_decay"]), ref_grad["log_decay"], 1.5 * dq_err, "decay gradient")


class _Spy:
    """Delegates `kernel[grid](...)` to the real kernel and records the launch in `log`."""

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        self.log.append(self.name)
        return self.kernel[grid]


def test_state_hook_runs_after_the_state_pass_and_before_the_outputs(monkeypatch):
    a, do, ds_out, nsub = _inputs("gqa_odd", "gate", True, torch.float32, seed=3)
    q, k, v, g, s_in = a["q"], a["k"], a["v"], a["log_decay"], a["initial_state"]
    log, seen = [], {}
    monkeypatch.setattr(tk_fwd, "_out_kernel", _Spy(tk_fwd._out_kernel, "out", log))
    for name in ("_dq_kernel", "_dk_kernel", "_dv_kernel"):
        monkeypatch.setattr(tk_bwd, name, _Spy(getattr(tk_bwd, name), name, log))

    def hook(name):
        def record(state):
            log.append(name)
            seen[name] = state.clone()
            return lambda: log.append(f"{name}_late")  # hands back no state: nothing changes

        return record

    o, s_out = tk.fwd(q, k, v, g, SCALE, s_in, state_hook=hook("fwd_hook"), nsub=nsub)
    *_, ds_in = tk.bwd(q, k, v, g, SCALE, do, s_in, ds_out, state_hook=hook("bwd_hook"), nsub=nsub)
    # the backward awaits its late gradient only after the dq kernel is queued
    assert log == ["fwd_hook", "fwd_hook_late", "out", "bwd_hook", "_dq_kernel", "bwd_hook_late", "_dk_kernel",
                   "_dv_kernel"]  # fmt: skip
    torch.testing.assert_close(seen["fwd_hook"], s_out, rtol=0, atol=0)
    torch.testing.assert_close(seen["bwd_hook"], ds_in, rtol=0, atol=0)
    _, ref_s, ref_grad = _reference(a, do, ds_out)
    assert_close_rms(seen["fwd_hook"], ref_s, 2e-5, "state given to the forward hook")
    assert_close_rms(seen["bwd_hook"], ref_grad["initial_state"], 2e-5, "state given to the backward hook")


def test_gqa_without_decay_shares_states_per_kv_head():
    """No decay and no incoming state: the state pass runs per kv head, the final state per query head."""
    a, do, _, nsub = _inputs("mqa_short", "none", False, torch.float32, seed=8)
    ref_o, ref_s, _ = _reference(a, do, None)
    o, s_out = tk.fwd(a["q"], a["k"], a["v"], None, SCALE, None, nsub=nsub)
    assert s_out.shape == ref_s.shape
    assert_close_rms(o, ref_o, 2e-5, "o")
    assert_close_rms(s_out, ref_s, 2e-5, "final state")


def test_kernels_for_routes_only_cuda_16_and_32_bit_to_triton():
    from lasp_fx.ops.op import kernels_for

    assert kernels_for(torch.zeros(1)) is chunked
    assert kernels_for(torch.zeros(1, dtype=torch.float64)) is chunked
    if torch.cuda.is_available():
        assert kernels_for(torch.zeros(1, device="cuda", dtype=torch.bfloat16)) is tk
        assert kernels_for(torch.zeros(1, device="cuda", dtype=torch.float64)) is chunked
