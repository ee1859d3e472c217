"""The spawn harness (results by rank, child tracebacks in the parent, hangs cut off) and the cost model."""

from __future__ import annotations

import time

import pytest
import torch

import lasp_fx
from lasp_fx.distributed import estimate, resolve_group
from lasp_fx.distributed.cost import resolve_method
from tests.helpers import workers_harness
from lasp_fx.distributed.spawn import SpawnedError, run_spawned


def test_results_come_back_by_rank_from_one_group():
    results = run_spawned(workers_harness.sum_of_ranks, 3, "x")
    assert [r["rank"] for r in results] == [0, 1, 2]
    assert all(r["world"] == 3 and r["sum"] == 3.0 and r["tag"] == "x" and r["threads"] == 1 for r in results)


def test_a_raising_rank_raises_in_the_parent_with_its_traceback():
    with pytest.raises(SpawnedError) as info:
        run_spawned(workers_harness.raise_on, 2, 1)
    message = str(info.value)
    assert "rank 1 raised" in message and "ValueError: planted failure on rank 1" in message
    assert "workers_harness.py" in message  # the child's own traceback, not the parent's


def test_a_hanging_rank_is_cut_off():
    start = time.monotonic()
    with pytest.raises(SpawnedError, match=r"did not report within 6 s"):
        run_spawned(workers_harness.hang, 2, 600.0, timeout=6.0)
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_cost_model_ring_for_few_ranks_allgather_for_many(device):
    mib = 2**20
    few, many = estimate(2, mib, device), estimate(64, mib, device)
    assert few.method == "ring" and few.ring_us < few.allgather_us
    assert many.method == "allgather" and many.allgather_us < many.ring_us
    assert "ring" in few.reason and f"{few.ring_us:.0f} us" in few.reason
    ring = [estimate(p, mib, device).ring_us for p in (2, 3, 4)]
    assert ring[1] - ring[0] == pytest.approx(ring[2] - ring[1])  # one hop more per rank
    assert resolve_method("auto", 2, mib, device) == "ring"
    assert resolve_method("allgather", 2, mib, device) == "allgather"


def test_cost_model_takes_the_allgather_through_peer_memory_at_every_size():
    mib = 2**20
    for P in (2, 3, 4, 8):
        c = estimate(P, mib, "cuda", peer=True)
        assert c.method == "allgather" and "through peer memory" in c.reason, c.reason
        assert c.allgather_us < estimate(P, mib, "cuda").allgather_us  # cheaper than NCCL's
    assert resolve_method("auto", 2, mib, "cuda", peer=True) == "allgather"
    assert estimate(2, mib, "cpu", peer=True).method == "ring"  # no peer memory off CUDA


@pytest.mark.parametrize("bad", ["Ring", "p2p", ""])
def test_unknown_method_is_refused(bad):
    x = torch.randn(1, 4, 2, 4)
    with pytest.raises(ValueError, match="method must be one of \\('auto', 'ring', 'allgather'\\)"):
        lasp_fx.linear_attention(x, x, x, group="any", method=bad)


def test_group_needs_an_initialised_process_group_or_the_right_type():
    with pytest.raises(TypeError, match="ProcessGroup, a DeviceMesh or a group name, got int"):
        resolve_group(3)
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            resolve_group("0")
