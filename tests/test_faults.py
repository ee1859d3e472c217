"""Failure behaviour on 3 gloo ranks: a rank that raises, dies or disagrees never leaves the others hanging.

Every rank's outcome is checked: the culprit (rank 1) raises its own error; each other rank raises a
lasp_fx error (RankFailedError, RankMismatchError or ExchangeTimeoutError) naming rank 1, within
the bound (BOUND_S, from a `timeout` of TIMEOUT_S), and none returns a result.
"""

from __future__ import annotations

import pytest
import torch

from lasp_fx.distributed.errors import RankMismatchError

from tests.helpers import workers_faults
from lasp_fx.distributed.spawn import run_spawned

TIMEOUT_S = 2.0
BOUND_S = 30.0  # timeout, plus the process's own slowness on a loaded 2-core box
FAULTS = ("bad_input", "inside", "killed", "length")
METHODS = ("ring", "allgather")
LASP_ERRORS = ("RankFailedError", "RankMismatchError", "ExchangeTimeoutError")


def _assert_bystander(rank, outcome, fault):
    assert outcome["error"] in LASP_ERRORS, f"rank {rank} ({fault}): {outcome}"
    assert outcome["module"].startswith("lasp_fx"), outcome
    # a point-to-point wait or a reported failure names rank 1; a collective that timed out cannot
    named = "rank 1" in outcome["message"] or "with all ranks" in outcome["message"]
    assert named, f"rank {rank} does not name the culprit: {outcome['message']}"
    assert outcome["seconds"] < BOUND_S, f"rank {rank} took {outcome['seconds']:.1f} s"


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method", METHODS)
def test_every_other_rank_raises_within_the_bound(method, fault):
    case = dict(method=method, fault=fault, timeout=TIMEOUT_S)
    results = run_spawned(workers_faults.op_fault, 3, case, timeout=90, may_die=(1,) if fault == "killed" else ())
    culprit = results[workers_faults.CULPRIT]
    if fault == "killed":
        assert culprit is None
    else:
        expected = {"bad_input": "ValueError", "inside": "_PlantedFailure", "length": "RankMismatchError"}[fault]
        assert culprit["error"] == expected, culprit
    for rank in (0, 2):
        _assert_bystander(rank, results[rank], fault)
    if fault == "inside" and method == "allgather":  # the failure travels in the all-gather: named at once
        assert all("rank 1 failed" in results[r]["message"] for r in (0, 2))
        assert "planted failure" in results[0]["message"]
    if fault == "inside" and method == "ring":  # rank 2 waits for rank 1's state, and gets its failure instead
        assert "rank 1 failed" in results[2]["message"] and results[2]["seconds"] < TIMEOUT_S
    if fault == "length":  # each rank's value is named
        mismatch = results[1]["message"] if method == "ring" else results[0]["message"]
        assert "q [1, 8, 2, 4]" in mismatch and "q [1, 6, 2, 4]" in mismatch, mismatch


def test_parallelize_refuses_a_later_call_with_another_local_length():
    """On a CPU group every call's shapes are compared (8 bytes on the host): every rank raises the
    same error naming each rank's shapes. (On NCCL the op's headers check it: the tests above.)"""
    method = "ring"
    results = run_spawned(workers_faults.parallelize_length_change, 2, dict(method=method, timeout=60.0),
                          timeout=240, pg_timeout=30)
    for rank, outcomes in enumerate(results):
        assert outcomes[0]["error"] is None, f"rank {rank}: the first call failed: {outcomes[0]}"
        assert len(outcomes) == 2 and outcomes[1]["error"] is not None, f"rank {rank} returned a result: {outcomes}"
    for rank, (_, mismatch) in enumerate(results):
        assert mismatch["error"] == "RankMismatchError", f"rank {rank}: {mismatch}"
        assert "rank 0: [[1, 8]" in mismatch["message"] and "rank 1: [[1, 6]" in mismatch["message"], mismatch
        assert mismatch["seconds"] < BOUND_S


class _Group:
    group_name = "unit"

    def rank(self):
        return 0

    def size(self):
        return 2


def _link(T, on_host=True):
    from lasp_fx.distributed import header
    from lasp_fx.distributed.link import Link

    q = torch.zeros(1, T, 2, 4)
    kind = Link if on_host else type("DeviceLink", (Link,), {"on_host": property(lambda self: False)})
    return kind(_Group(), header.make(q, q, q, None, 0.5, "ring", "forward", 0), 1.0, (1, 2, 4, 4),
                torch.float32, q.device, False)


def test_header_round_trip_and_the_device_check_poisons_instead_of_syncing():
    from lasp_fx.distributed import header

    mine = _link(8)
    sent = header.Header.decode(mine.seal([torch.ones(32)])[-header.SIZE:].tolist())
    assert sent == mine.header
    good, other = mine.seal([torch.ones(32)]), _link(6).seal([torch.ones(32)])
    assert torch.equal(mine.open(good[None], [1]), torch.ones(1, 32))
    with pytest.raises(RankMismatchError, match=r"rank 1: q \[1, 6, 2, 4\]"):
        mine.open(other[None], [1])
    device_side = _link(8, on_host=False)
    assert torch.equal(device_side.open(good[None], [1]), torch.ones(1, 32))
    assert device_side.open(other[None], [1]).isnan().all()
    failed = mine.seal([torch.ones(32)], status=mine.header.failed("OutOfMemoryError: boom"))
    assert device_side.open(failed[None], [1]).isnan().all()


DEVICE_CASES = [dict(B=2, T=37, H=4, Hk=2, D=8, E=6, init="rank0", final=True, decay=d, method=m, check=False,
                     id=f"{d}-{m}", seed=i) for i, (d, m) in enumerate((d, m) for d in ("none", "const", "gate")
                                                                          for m in METHODS)]


def test_the_cuda_paths_kernels_compute_the_same_function(monkeypatch):
    """The CUDA path (headers checked inside the ring's and the all-gather's combination kernels)
    run on gloo ranks under Triton's interpreter: every rank matches the single-process op."""
    from tests.helpers import workers_sp

    monkeypatch.setenv("LASP_FX_DEVICE_CHECKS", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for rank, errors in enumerate(run_spawned(workers_sp.check_cases, 3, DEVICE_CASES, timeout=300)):
        for case, errs in errors.items():
            assert all(e <= 1e-5 for e in errs.values()), f"rank {rank} {case}: {errs}"


@pytest.mark.parametrize("method", METHODS)
def test_on_the_cuda_path_a_mismatch_is_nan_not_a_wrong_number(method, monkeypatch):
    monkeypatch.setenv("LASP_FX_DEVICE_CHECKS", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    results = run_spawned(workers_faults.device_mismatch, 3, method, timeout=300)
    for rank, flags in enumerate(results):
        assert not flags["grads finite"], f"rank {rank}: finite gradients from mismatched ranks: {flags}"
    assert not results[1]["o finite"] and not results[2]["o finite"]  # after the first rank that differs


@pytest.mark.parametrize("method", METHODS)
def test_on_the_cuda_path_a_mismatch_raises_on_every_rank_at_the_next_step(method, monkeypatch):
    """Step 2's mismatch (the last rank's slice is shorter) gives NaN and is recorded by the exchange
    kernels; step 3's first lasp_fx call raises RankMismatchError on every rank, before its exchange,
    naming the values (a ring rank that only got a NaN state names the rank that passed it on)."""
    monkeypatch.setenv("LASP_FX_DEVICE_CHECKS", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    results = run_spawned(workers_faults.later_mismatch, 3, method, timeout=300)
    for rank, (first, mismatched, *rest) in enumerate(results):
        assert first["error"] is None and first["finite"], f"rank {rank}: {first}"
        assert mismatched["error"] is None, f"rank {rank} raised in the mismatched step itself: {mismatched}"
        assert len(rest) == 1 and rest[0]["error"] == "RankMismatchError", f"rank {rank}: {rest}"
        message = rest[0]["message"]
        assert f"rank {rank}: q [1, {6 if rank == 2 else 8}, 2, 4]" in message, f"rank {rank}: {message}"
        # the sender it names: the ring's neighbours (rank 0 hears of rank 2 only through rank 1), or every other rank
        named = {"ring": {0: "rank 1: q [1, 8, 2, 4], k/v heads 2, E 4, torch.float64, decay per-token [B, T, H], "
                             "method ring, scale 0.5; passed on a state from a rank whose inputs differ",
                          1: "rank 2: q [1, 6, 2, 4]", 2: "rank 1: q [1, 8, 2, 4]"},
                 "allgather": {0: "rank 2: q [1, 6, 2, 4]", 1: "rank 2: q [1, 6, 2, 4]", 2: "rank 0: q [1, 8, 2, 4]"}}
        assert named[method][rank] in message, f"rank {rank}: {message}"
        assert rest[0]["seconds"] < BOUND_S
    assert not all(m["finite"] for _, m, _ in results)  # the mismatched step's results: NaN somewhere


def test_parallelize_on_the_cuda_path_raises_at_the_step_after_a_mismatch(monkeypatch):
    """The issue's case: after parallelize()'s first call only the headers check (NCCL); a later step
    where a rank passes a shorter slice gives a NaN loss, and the next step raises on every rank."""
    monkeypatch.setenv("LASP_FX_DEVICE_CHECKS", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    results = run_spawned(workers_faults.parallelize_later_mismatch, 3, "ring", timeout=300, pg_timeout=60)
    for rank, outcomes in enumerate(results):
        assert outcomes[0]["error"] is None and outcomes[0]["finite"], f"rank {rank}: {outcomes}"
        assert outcomes[1]["error"] is None and not outcomes[1]["finite"], f"rank {rank}: {outcomes}"
        assert len(outcomes) == 3 and outcomes[2]["error"] == "RankMismatchError", f"rank {rank}: {outcomes}"
        assert f"rank {rank}: q [1, {6 if rank == 2 else 8}," in outcomes[2]["message"], outcomes[2]["message"]
        assert outcomes[2]["seconds"] < BOUND_S
