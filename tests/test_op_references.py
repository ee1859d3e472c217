"""The two references agree with each other, and with a hand-computed tiny case."""

import pytest
import torch

from lasp_fx.ops import naive
from lasp_fx.numerics import assert_close_rms, random_inputs


@pytest.mark.parametrize("decay", ["none", "const", "gate"])
@pytest.mark.parametrize("T", [1, 7, 33], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("kv_heads", [4, 2, 1], ids=lambda h: f"Hkv{h}")
def test_recurrent_equals_quadratic(decay, T, kv_heads):
    args = random_inputs(2, T, 4, 5, 3, kv_heads=kv_heads, decay=decay, initial_state=True)
    for a in args.values():
        a.requires_grad_()
    o1, s1 = naive.recurrent_linear_attention(**args, scale=0.3)
    o2, s2 = naive.quadratic_linear_attention(**args, scale=0.3)
    assert_close_rms(o2, o1, 1e-12, "o")
    assert_close_rms(s2, s1, 1e-12, "final state")
    do, ds = torch.randn_like(o1), torch.randn_like(s1)
    g1 = torch.autograd.grad((o1 * do).sum() + (s1 * ds).sum(), list(args.values()))
    g2 = torch.autograd.grad((o2 * do).sum() + (s2 * ds).sum(), list(args.values()))
    for name, a, b in zip(args, g2, g1):
        assert_close_rms(a, b, 1e-12, f"d{name}")


def test_tiny_case_by_hand():
    # One head, D = E = 1, decay gamma = 0.5, scale 1: o_t = sum_j 0.5^(t-j) q_t k_j v_j.
    q = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1)
    k = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    v = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    log_decay = torch.log(torch.tensor([0.5], dtype=torch.float64))
    expected = torch.tensor([1 * 4.0, 2 * (0.5 * 4 + 2), 3 * (0.25 * 4 + 0.5 * 2 + 2)], dtype=torch.float64)
    for ref in (naive.recurrent_linear_attention, naive.quadratic_linear_attention):
        o, s = ref(q, k, v, log_decay, scale=1.0)
        torch.testing.assert_close(o.flatten(), expected)
        torch.testing.assert_close(s.flatten(), torch.tensor([0.25 * 4 + 0.5 * 2 + 2], dtype=torch.float64))
