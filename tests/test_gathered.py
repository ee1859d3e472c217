"""The all-gather's combination kernel (ops/triton/gathered.py) against a float64 chain of steps."""

import pytest
import torch

from lasp_fx.ops.triton.gathered import combine_gathered
from lasp_fx.testing.numerics import assert_close_rms

B, H, D, E = 2, 3, 5, 7  # D*E = 35: one masked block per head
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel: on the GPU, else the interpreter


def _rows(P, has_decay, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(P, B, H, D, E, generator=gen, dtype=torch.float64)
    decays = -torch.rand(P, B, H, generator=gen, dtype=torch.float64) * 3 if has_decay else None
    if has_decay:
        decays[0, 0, 1] = float("-inf")  # a slice that forgets everything before it
    parts = [states.reshape(P, -1)] + ([decays.reshape(P, -1)] if has_decay else [])
    return torch.cat(parts, 1).to(dtype), states, decays


def _step(x, decays, j, s):
    return s + (x if decays is None else torch.exp(decays[j])[..., None, None] * x)


def _reference(states, decays, rank, forward, d_final):
    """The chain the ring runs, in float64: (late, end) of gathered.py's docstring."""
    P = states.shape[0]
    if forward:
        x = torch.zeros_like(states[0])
        for j in range(rank):
            x = _step(x, decays, j, states[j])
        return x, _step(x, decays, rank, states[rank])
    m = torch.zeros_like(states[0])
    for j in reversed(range(rank + 1, P)):
        m = _step(m, decays, j, states[j])
    return (m if d_final is None else m + d_final), _step(m, decays, rank, states[rank])


# Only where LASP calls it: forward on ranks > 0, backward (with or without d_final) on ranks < P - 1.
CASES = [
    pytest.param(P, r, fwd, fin, id=f"P{P}-rank{r}-{'forward' if fwd else 'backward'}{'-d_final' if fin else ''}")
    for P in (2, 3, 4) for r in range(P) for fwd, fin in ((True, False), (False, False), (False, True))
    if (r > 0 if fwd else r < P - 1)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("has_decay", [False, True], ids=["no_decay", "decay"])
@pytest.mark.parametrize("P, rank, forward, with_final", CASES)
def test_combination_matches_the_chain(P, rank, forward, with_final, has_decay, dtype):
    rows, states, decays = _rows(P, has_decay, dtype, seed=P * 10 + rank)
    d_final = torch.randn(B, H, D, E, dtype=torch.float64) if with_final else None
    late, end = combine_gathered(rows.to(DEVICE), (B, H, D, E), rank, forward, has_decay,
                                 None if d_final is None else d_final.to(DEVICE, dtype))
    ref_late, ref_end = _reference(states, decays, rank, forward, d_final)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert late.dtype == end.dtype == dtype
    assert_close_rms(late, ref_late, tol, "late")
    assert_close_rms(end, ref_end, tol, "end")
