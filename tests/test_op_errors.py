"""Bad arguments get a TypeError / ValueError that names the argument, the expected and the actual value."""

import pytest
import torch

import lasp_fx


def _good():
    return dict(
        q=torch.randn(2, 10, 4, 8),
        k=torch.randn(2, 10, 2, 8),
        v=torch.randn(2, 10, 2, 6),
    )


BAD = {
    "q-rank3": (dict(q=torch.randn(2, 10, 8)), ValueError, r"q must have 4 dimensions .* got shape \[2, 10, 8\]"),
    "k-not-tensor": (dict(k=[1.0]), TypeError, r"k must be a torch.Tensor, got list"),
    "v-int": (dict(v=torch.ones(2, 10, 2, 6, dtype=torch.int64)), TypeError, r"v must be a floating-point tensor"),
    "batch": (dict(k=torch.randn(3, 10, 2, 8)), ValueError, r"batch sizes differ: q has 2, k has 3"),
    "seq": (dict(v=torch.randn(2, 9, 2, 6)), ValueError, r"sequence lengths differ: q has 10, k has 10, v has 9"),
    "empty-seq": (
        dict(q=torch.randn(2, 0, 4, 8), k=torch.randn(2, 0, 2, 8), v=torch.randn(2, 0, 2, 6)),
        ValueError,
        r"at least 1, got 0",
    ),
    "head-dim": (dict(k=torch.randn(2, 10, 2, 7)), ValueError, r"same head_dim, got q 8 and k 7"),
    "kv-heads": (dict(v=torch.randn(2, 10, 1, 6)), ValueError, r"same number of heads, got k 2 and v 1"),
    "gqa": (
        dict(k=torch.randn(2, 10, 3, 8), v=torch.randn(2, 10, 3, 6)),
        ValueError,
        r"query heads \(4\) must be a multiple of the number of kv heads \(3\)",
    ),
    "dtype": (dict(k=torch.randn(2, 10, 2, 8, dtype=torch.float64)), TypeError, r"got q torch.float32, k torch.float64"),
    "decay-shape": (dict(log_decay=torch.zeros(2, 10)), ValueError, r"log_decay must have shape \[H\] = \[4\] .* got \[2, 10\]"),
    "decay-type": (dict(log_decay=0.9), TypeError, r"log_decay must be a torch.Tensor, got float"),
    "state-shape": (
        dict(initial_state=torch.zeros(2, 2, 8, 6)),
        ValueError,
        r"initial_state must have shape \[B, H, D, E\] = \[2, 4, 8, 6\], got \[2, 2, 8, 6\]",
    ),
    "scale-type": (dict(scale="0.5"), TypeError, r"scale must be a Python float or None, got str"),
}


@pytest.mark.parametrize("override,exc,message", BAD.values(), ids=BAD.keys())
def test_bad_argument_is_named(override, exc, message):
    args = _good() | override
    with pytest.raises(exc, match=message):
        lasp_fx.linear_attention(**args)


def test_mismatched_devices_meta():
    # A meta tensor is a second device on any machine.
    args = _good()
    args["v"] = args["v"].to("meta")
    with pytest.raises(ValueError, match=r"q, k and v must be on one device, got q cpu, k cpu, v meta"):
        lasp_fx.linear_attention(**args)
