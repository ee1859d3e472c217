"""Every public entry x every bad input a user can pass: the error type, and a message naming the
argument, what was expected and what was given (one table; spawned rows need a process group).
A -inf log-decay is not bad input: it is a state reset (tests/test_forget_gate.py)."""

from __future__ import annotations

import re

import pytest
import torch

import lasp_fx
from tests.helpers import workers_bad_inputs
from lasp_fx.distributed.spawn import run_spawned

B, T, H, D = 1, 8, 2, 4


def _x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*(shape or (B, T, H, D)), dtype=dtype, device=device)


def _op(**over):
    args = dict(q=_x(), k=_x(), v=_x())
    args.update(over)
    return lambda: lasp_fx.linear_attention(**args)


def _lasp_backend(**options):
    return lambda: torch.compile(torch.nn.Linear(2, 2), backend="lasp", options=options)(torch.zeros(1, 2))


def _parallelize(**options):
    return lambda: lasp_fx.parallelize(torch.nn.Linear(2, 2), **options)


def _decay(value, per_token=True):
    g = -torch.rand(B, T, H) if per_token else -torch.rand(H)
    g.view(-1)[3 % g.numel()] = value
    return g


# id: (call, error type, regex the message must match: argument, expected, given)
LOCAL = {
    "op-q-not-tensor": (_op(q=[[1.0]]), TypeError, r"q must be a torch.Tensor, got list"),
    "op-q-integer": (_op(q=torch.zeros(B, T, H, D, dtype=torch.long)), TypeError, r"q must be a floating-point.*int64"),
    "op-q-3d": (_op(q=_x(B, T, H * D)), ValueError,
                r"q must have 4 dimensions \[B, T, heads, head_dim\], got shape \[1, 8, 8\]"),
    "op-dtypes-differ": (_op(k=_x(dtype=torch.float64)), TypeError,
                         r"q, k and v must share one dtype, got q torch.float32, k torch.float64"),
    "op-devices-differ": (_op(k=_x(device="meta")), ValueError, r"q, k and v must be on one device, got q cpu, k meta"),
    "op-batch-differs": (_op(k=_x(2, T, H, D)), ValueError, r"batch sizes differ: q has 1, k has 2"),
    "op-lengths-differ": (_op(v=_x(B, T + 1, H, D)), ValueError, r"sequence lengths differ: q has 8, k has 8, v has 9"),
    "op-empty-sequence": (_op(q=_x(B, 0, H, D), k=_x(B, 0, H, D), v=_x(B, 0, H, D)), ValueError,
                          r"sequence length.*at least 1, got 0"),
    "op-head-dim-differs": (_op(k=_x(B, T, H, D + 1)), ValueError, r"same head_dim, got q 4 and k 5"),
    "op-kv-heads-differ": (_op(v=_x(B, T, 1, D)), ValueError,
                           r"k and v must have the same number of heads, got k 2 and v 1"),
    "op-gqa-not-multiple": (_op(q=_x(B, T, 3, D)), ValueError,
                            r"query heads \(3\) must be a multiple of the number of kv heads \(2\)"),
    "op-decay-shape": (_op(log_decay=-torch.rand(B, T)), ValueError,
                       r"log_decay must have shape \[H\] = \[2\].*\[B, T, H\] = \[1, 8, 2\].*got \[1, 8\]"),
    "op-decay-device": (_op(log_decay=-torch.rand(H, device="meta")), ValueError,
                        r"log_decay must be on cpu like q, got meta"),
    "op-decay-positive-token": (_op(log_decay=_decay(0.5)), ValueError, r"log_decay must be <= 0 .*got 0.5 at index"),
    "op-decay-positive-head": (_op(log_decay=_decay(0.25, per_token=False)), ValueError,
                               r"log_decay must be <= 0 .*got 0.25 at index \[1\]"),
    "op-decay-nan": (_op(log_decay=_decay(float("nan"))), ValueError, r"log_decay must be <= 0 .*got nan"),
    "op-initial-state-shape": (_op(initial_state=torch.zeros(B, H, D)), ValueError,
                               r"initial_state must have shape \[B, H, D, E\] = \[1, 2, 4, 4\], got \[1, 2, 4\]"),
    "op-scale-type": (_op(scale="0.5"), TypeError, r"scale must be a Python float or None, got str"),
    "op-method": (_op(group="any", method="p2p"), ValueError,
                  r"method must be one of .*got 'p2p'"),
    "op-group-type": (_op(group=3), TypeError,
                      r"group must be a torch.distributed ProcessGroup, a DeviceMesh or a group name, got int"),
    "op-group-without-process-group": (_op(group="0"), RuntimeError,
                                       r"group='0' names a process group, but torch.distributed is not initialised"),
    "parallelize-no-process-group": (lambda: lasp_fx.parallelize(torch.nn.Linear(2, 2)), RuntimeError,
                                     r"needs torch.distributed.*init_process_group"),
    "parallelize-method": (_parallelize(method="p2p"), ValueError, r"method must be one of .*got 'p2p'"),
    "parallelize-inputs": (_parallelize(inputs="half"), ValueError,
                           r"inputs must be one of \('full', 'local'\), got 'half'"),
    "parallelize-outputs": (_parallelize(outputs="dense"), ValueError, r"outputs must be one of .*got 'dense'"),
    "parallelize-compiler": (_parallelize(compiler="tvm"), ValueError, r"compiler must be one of .*got 'tvm'"),
    "parallelize-timeout": (_parallelize(timeout=0), ValueError,
                            r"timeout must be a positive number of seconds, got 0"),
    "parallelize-unknown-option": (_parallelize(chunk=64), TypeError, r"chunk"),
    "shard_batch-no-process-group": (lambda: lasp_fx.shard_batch(torch.zeros(2, 4)), RuntimeError,
                                     r"torch.distributed is not initialised: call init_process_group"),
    "backend-unknown-option": (_lasp_backend(**{"chunk": 1}), Exception,
                               r"unknown option\(s\) \['chunk'\] for backend=\"lasp\""),
    "backend-compiler": (_lasp_backend(**{"compiler": "tvm"}), Exception,
                         r"options\[\"compiler\"\] must be one of .*got 'tvm'"),
    "backend-seq-dim": (_lasp_backend(**{"seq_dim": -1}), Exception,
                        r"options\[\"seq_dim\"\] must be a non-negative int, got -1"),
    "backend-method-without-mesh": (_lasp_backend(**{"method": "ring"}), Exception,
                                    r"options\[\"method\"\] needs options\[\"mesh\"\]"),
}

# rows that need 2 gloo ranks: (error type name, regex)
SPAWNED = {
    "shard_batch-not-divisible": ("ValueError",
                                  r"sequence length 7 .* not divisible by the 2 sequence-parallel ranks: pad"),
    "shard_batch-T<P": ("ValueError", r"each rank needs at least 2 tokens of the sequence, got 1"),
    "shard_batch-no-seq-dim": ("ValueError", r"no input tensor has a dimension 1 \(seq_dim\)"),
    "parallelize-T<P": ("ValueError", r"each rank needs at least 2 tokens of the sequence, got 1"),
    "parallelize-dtensor-replicated": ("ValueError",
                                       r"DTensor inputs must be sharded as \[Shard\(1\)\], got \[Replicate\(\)\]"),
    "op-timeout-negative": ("ValueError", r"timeout must be a positive number of seconds, got -1"),
    # a model dynamo cannot trace as one graph: a lasp_fx error naming the model's line, why, what to do
    "parallelize-trace-loop-on-values": ("CaptureError", r"data-dependent(.|\n)*workers_bad_inputs.py:\d+: for i in "
                                         r"ids.flatten\(\).unique\(\)(.|\n)*hint: Python control flow on tensor"),
    "parallelize-trace-lock": ("CaptureError", r"`lock` context manager(.|\n)*workers_bad_inputs.py:\d+: with _LOCK:"
                               r"(.|\n)*hint: the model must trace as one graph"),
    "parallelize-trace-asserts": ("CaptureError", r"raised AssertionError\('length 3 is not a multiple of 4'\)"
                                  r"(.|\n)*workers_bad_inputs.py:\d+: assert(.|\n)*each rank's slice"),
    "parallelize-trace-nested-region": ("CaptureError", r"inside a nested compile region(.|\n)*models.py:\d+: "
                                        r"(.|\n)*hint: torch's dynamo cannot yet trace a torch.compiler.nested_compile_region"),
    # lasp_fx's own ValueError, not dynamo's BackendCompilerFailed around it
    # the guard's line with its path as the user reads it (torch's own cut gave "ork/wt/...")
    "parallelize-trace-fixed-length": ("ValueError", r"^no input carries a dynamic sequence dimension 1(.|\n)*"
                                       r" at tests/helpers/workers_bad_inputs.py:\d+: return torch.stack(.|\n)*"
                                       r"for t in range\(ids.shape\[1\]\)"),
}


@pytest.mark.parametrize("row", list(LOCAL))
def test_bad_input_is_refused_with_a_clear_message(row):
    call, error, pattern = LOCAL[row]
    with pytest.raises(error) as info:
        call()
    assert re.search(pattern, str(info.value)), f"{row}: {info.value}"


@pytest.fixture(scope="module")
def spawned():
    return run_spawned(workers_bad_inputs.errors, 2, list(SPAWNED), timeout=300)


@pytest.mark.parametrize("row", list(SPAWNED))
def test_bad_input_on_every_rank_is_refused_with_a_clear_message(row, spawned):
    error, pattern = SPAWNED[row]
    for rank, per_rank in enumerate(spawned):
        got_type, message = per_rank[row]
        assert got_type == error and re.search(pattern, message), f"{row} rank {rank}: {got_type}: {message}"
