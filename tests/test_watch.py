"""The CUDA path's record of mismatched headers (distributed/watch.py): when it raises, what it names, when it is quiet.

On CPU the record is host memory (no event); the kernels that write it are tested in
test_gathered.py and test_peer.py, the whole path on gloo ranks in test_faults.py, and the
pinned copy with its CUDA event in bench/check_faults_gpu.py.
"""

import dataclasses

import pytest
import torch

from lasp_fx.distributed import header, watch
from lasp_fx.distributed.errors import RankFailedError, RankMismatchError
from lasp_fx.distributed.link import Link


class _Group:
    group_name = "unit"

    def __init__(self, rank=1, size=3):
        self._rank, self._size = rank, size

    def rank(self):
        return self._rank

    def size(self):
        return self._size


def _head(T, rank, direction="forward"):
    q = torch.zeros(1, T, 2, 4)
    return header.make(q, q, q, None, 0.5, "allgather", direction, rank)


def _device_link(group, head, record):
    return Link(group, head, 1.0, (1, 2, 4, 4), torch.float32, torch.device("cpu"), False, host=False, watch=record)


def _received(link, heads: dict):
    """link.open on the device path for messages from the ranks in `heads` (payload of ones)."""
    rows = torch.stack([torch.cat([torch.ones(32), header.as_tensor(h, torch.empty(0))]) for h in heads.values()])
    return link.open(rows, list(heads))


def test_a_forward_after_a_backward_raises_what_the_kernels_recorded_naming_every_rank():
    group, record = _Group(), watch.Watch(3, torch.device("cpu"))
    link = _device_link(group, _head(8, 1), record)
    assert _received(link, {0: _head(8, 0), 2: _head(8, 2)}).isfinite().all()
    assert not record.rows.any()
    payload = _received(link, {0: _head(8, 0), 2: _head(6, 2)})
    assert payload.isnan().all()  # the step's results are NaN as before
    record.start(True, group)  # no backward yet: the forward waits for nothing and raises nothing
    record.finish(True)
    record.finish(False)
    with pytest.raises(RankMismatchError) as caught:
        record.start(True, group)
    text = str(caught.value)
    assert "rank 1: q [1, 8, 2, 4]" in text and "rank 2: q [1, 6, 2, 4]" in text and "rank 0" not in text
    assert "earlier call" in text and "next call's forward" in text
    assert not record.rows.any()  # raised once: the next step starts clean
    record.finish(False)
    record.start(True, group)


def test_a_forward_recomputed_inside_backward_is_no_new_step():
    """Activation checkpointing re-runs forwards inside autograd's backward: they neither raise nor end the step."""
    group, record = _Group(), watch.Watch(3, torch.device("cpu"))
    _received(_device_link(group, _head(8, 1), record), {0: _head(7, 0)})
    record.finish(False)
    seen = {}

    class Recompute(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            record.start(True, group)
            seen["pending"] = record.after_backward
            return g * 2

    Recompute.apply(torch.ones(1, requires_grad=True)).sum().backward()
    assert seen == {"pending": True}
    with pytest.raises(RankMismatchError, match=r"rank 0: q \[1, 7, 2, 4\]"):
        record.start(True, group)


def test_a_relayed_state_and_a_failed_sender_are_named():
    group, record = _Group(rank=0), watch.Watch(3, torch.device("cpu"))
    relayed = dataclasses.replace(_head(8, 1), status=header.RELAYED)
    _received(_device_link(group, _head(8, 0), record), {1: relayed})
    record.finish(False)
    with pytest.raises(RankMismatchError, match="rank 1: .*passed on a state from a rank whose inputs differ"):
        record.start(True, group)
    failed = _head(8, 2).failed("OutOfMemoryError: boom")
    _received(_device_link(group, _head(8, 0), record), {2: failed})
    record.finish(False)
    with pytest.raises(RankFailedError, match="rank 2 failed .* earlier call: OutOfMemoryError: boom"):
        record.start(True, group)


def test_one_watch_per_group_and_device():
    group, other = _Group(), _Group()
    cpu = torch.device("cpu")
    assert watch.of(group, cpu) is watch.of(group, cpu)
    assert watch.of(other, cpu) is not watch.of(group, cpu)
    assert watch.of(group, cpu).rows.shape == (4, 1 + header.SIZE)
