"""The decay-gradient kernels (ops/triton/decay_grad.py) against float64 PyTorch."""

import pytest
import torch

from lasp_fx.ops import chunked
from lasp_fx.ops.triton import decay_grad
from lasp_fx.numerics import assert_close_rms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernels: on the GPU, else the interpreter

SHAPES = {  # B, T, H, n_k
    "one_block": (1, 100, 3, 1),
    "blocks_cut_mid": (2, 1000, 5, 2),  # T not a multiple of the 256-token block
    "more_blocks_than_a_suffix_step": (1, 256 * 70 + 5, 2, 1),  # 71 blocks: two 64-block steps of the suffix sums
}


@pytest.mark.parametrize("with_tail", [False, True], ids=["no_tail", "tail"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_assemble_then_reverse_cumsum(shape, with_tail):
    B, T, H, NK = shape
    gen = torch.Generator().manual_seed(T + H)
    dGq, dGk = (torch.randn(B, T, H, NK, generator=gen, dtype=torch.float64) for _ in range(2))
    tail = torch.randn(B, H, generator=gen, dtype=torch.float64) if with_tail else None
    dG = decay_grad.assemble(dGq.to(DEVICE, torch.float32), dGk.to(DEVICE, torch.float32),
                             None if tail is None else tail.to(DEVICE, torch.float32))
    ref = dGq.sum(-1) - dGk.sum(-1)
    if with_tail:
        ref[:, -1] += tail
    assert_close_rms(dG, ref, 1e-6, "dG")

    gate = torch.randn(B, T, H).to(DEVICE)
    got = decay_grad.log_decay_grad(dG, gate)
    assert got.shape == gate.shape and got.dtype == gate.dtype
    assert_close_rms(got, chunked.log_decay_grad(ref, gate.double()), 1e-6, "reverse cumsum")


def test_per_head_decay_keeps_the_weighted_sum():
    dG = torch.randn(2, 300, 4).to(DEVICE)
    head = torch.randn(4).to(DEVICE)
    assert_close_rms(decay_grad.log_decay_grad(dG, head), chunked.log_decay_grad(dG.double(), head.double()), 1e-6,
                     "per-head decay gradient")
