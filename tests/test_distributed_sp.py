"""LASP across P = 1..4 ranks (gloo on the CPU; NCCL on GPUs, one rank per GPU): every rank's output, final
state and gradients equal the single-process op's.

One spawn per device and world size runs every check of that size (process starts cost ~2 s each
on the 2-core CI box); the tests below read its results. float64 throughout, tolerance 1e-10
relative RMS. On CUDA the sizes above the GPU count collapse to it (one GPU: the checks of
`check_cases` on a group of one); checks that need a given size run only where it fits.
"""

from __future__ import annotations

import functools

import pytest

from tests.helpers import workers_sp
from lasp_fx.distributed.spawn import SpawnedError, device_worlds, run_spawned, world_sizes

TOL = 1e-10

# Slice layouts: T is the length of each rank's slice; chunks are 64 tokens, so every layout
# cuts the sequence mid-chunk (T = 37, 100) or holds less than a chunk per rank (T = 5).
LAYOUTS = {
    "gqa-T37-init0-final": dict(B=2, T=37, H=4, Hk=2, D=8, E=6, init="rank0", final=True),
    "mha-T100-initall": dict(B=1, T=100, H=2, Hk=2, D=16, E=8, init="all", final=False),
    "mqa-T5-final": dict(B=2, T=5, H=3, Hk=1, D=4, E=4, init=None, final=True),
}
DECAYS = ("none", "const", "gate")
METHODS = ("ring", "allgather")
COMPILE_BACKENDS = ("eager", "aot_eager")
COMPILE_P = (2, 3)
MISMATCHES = ("length", "dtype", "heads", "decay", "method")
DIRECTIONS = ("forward", "backward")


def _worlds(*sizes, exact=False) -> list:
    """device_worlds with one xdist group per spawn: under `pytest -n N --dist loadgroup` the tests
    reading one spawn's results run on one worker, which spawns it once."""
    return [pytest.param(*p.values, id=p.id, marks=pytest.mark.xdist_group(f"sp-{p.id}"))
            for p in device_worlds(*sizes, exact=exact)]


def _case_id(layout, decay, method, backend=None) -> str:
    return "-".join(x for x in (layout, decay, method, backend) if x)


def _cases(world: int) -> list[dict]:
    cases = [
        dict(LAYOUTS[layout], id=_case_id(layout, decay, method), decay=decay, method=method, seed=i)
        for i, (layout, decay, method) in enumerate(
            (layout, decay, method) for layout in LAYOUTS for decay in DECAYS for method in METHODS
        )
    ]
    # a decay that is a buffer (no gradient asked): the backward skips dG, the rest must not change;
    # these run without the per-call metadata check (check=False), as a training loop would
    cases += [
        dict(LAYOUTS["gqa-T37-init0-final"], id=_case_id("gqa-T37-init0-final", decay, method, "fixed"),
             decay=decay, method=method, fixed_decay=True, check=False, seed=50 + i)
        for i, (decay, method) in enumerate((d, m) for d in ("const", "gate") for m in METHODS)
    ]
    if world in COMPILE_P:
        layout = "gqa-T37-init0-final"
        cases += [
            dict(LAYOUTS[layout], id=_case_id(layout, "gate", method, backend), decay="gate", method=method,
                 compile=backend, seed=100 + i)
            for i, (method, backend) in enumerate((m, b) for m in METHODS for b in COMPILE_BACKENDS)
        ]
    return cases


def _jobs(device: str, world: int) -> list:
    jobs = []
    if world == 1:
        jobs += [("check_group_of_one", dict(LAYOUTS["gqa-T37-init0-final"], decay=d, method=m, seed=7))
                 for d in DECAYS for m in METHODS]
    if world in world_sizes(device, (2, 3, 4)):  # on one GPU the group of one runs them too
        jobs += [("check_cases", _cases(world))]
    if world == 2:
        jobs += [("check_mismatch", what) for what in MISMATCHES]
        jobs += [("exchange_order", (method, direction)) for method in METHODS for direction in DIRECTIONS]
    if world == 4:  # 2 x 2 mesh (dp, sp): two independent 2-rank sequences
        layout = dict(LAYOUTS["gqa-T37-init0-final"], decay="gate", seed=11)
        jobs += [("check_mesh_2d", dict(layout, method="ring")),
                 ("check_mesh_2d", dict(layout, method="allgather", compile="aot_eager")),
                 ("mesh_without_sp_dim", None)]
    return jobs


@functools.cache
def _spawn_once(device: str, world: int):
    try:
        return run_spawned(workers_sp.run_jobs, world, _jobs(device, world), device, device=device,
                           timeout=240.0), None
    except SpawnedError as e:  # cached too: one failed spawn must not be retried by every test
        return None, e


def _spawned(device: str, world: int, job) -> list:
    """Every rank's result of `job` ((function name, argument), or the name of a function run once) on
    this device and world size (one spawn per session)."""
    results, error = _spawn_once(device, world)
    if error is not None:
        raise error
    jobs = _jobs(device, world)
    index = next(i for i, j in enumerate(jobs) if j == job or j[0] == job)
    return [r[index] for r in results]


def _assert_small(errors_per_rank: list[dict], tol: float = TOL) -> None:
    bad = [f"rank {r}: {what} {err:.2e}" for r, errs in enumerate(errors_per_rank)
           for what, err in errs.items() if not err <= tol]
    assert not bad, "LASP differs from the single-process op: " + "; ".join(bad)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("device, world", _worlds(2, 3, 4))
def test_matches_single_process(device, world, layout, decay, method):
    results = [r[_case_id(layout, decay, method)] for r in _spawned(device, world, "check_cases")]
    _assert_small(results)
    for errs in results:  # every quantity was compared
        assert {"o", "final_state", "dq", "dk", "dv"} <= set(errs)
        assert (decay == "none") != any(k.startswith("dlog_decay") for k in errs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("decay", ["const", "gate"])
@pytest.mark.parametrize("device, world", _worlds(2, 3, 4))
def test_fixed_decay_matches_single_process(device, world, decay, method):
    results = [r[_case_id("gqa-T37-init0-final", decay, method, "fixed")]
               for r in _spawned(device, world, "check_cases")]
    _assert_small(results)
    for errs in results:
        assert {"o", "final_state", "dq", "dk", "dv", "dlog_decay is not None"} <= set(errs)


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device, world", _worlds(*COMPILE_P, exact=True))
def test_compiled_fullgraph(device, world, method, backend):
    results = [r[_case_id("gqa-T37-init0-final", "gate", method, backend)]
               for r in _spawned(device, world, "check_cases")]
    _assert_small(results)
    assert all("LASP ops in graph - 1" in errs for errs in results)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("device, world", _worlds(1))
def test_group_of_one_is_the_single_device_op(device, world, decay, method):
    job = ("check_group_of_one", dict(LAYOUTS["gqa-T37-init0-final"], decay=decay, method=method, seed=7))
    (same,) = _spawned(device, world, job)
    assert same and all(same.values()), f"not bit-identical: {same}"


@pytest.mark.parametrize("what", MISMATCHES)
@pytest.mark.parametrize("device, world", _worlds(2, exact=True))
def test_mismatched_ranks_raise_everywhere(device, world, what):
    for rank, result in enumerate(_spawned(device, world, ("check_mismatch", what))):
        message = result["message"]
        assert message is not None, f"rank {rank} did not raise for a different {what}"
        assert "passed different inputs" in message and "rank 1:" in message
        assert result["still_works"], f"rank {rank}: the group was unusable after the error"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device, world", _worlds(4, exact=True))
def test_dp_x_sp_mesh_uses_the_sp_dimension(device, world, method):
    job = next(j for j in _jobs(device, world) if j[0] == "check_mesh_2d" and j[1]["method"] == method)
    _assert_small(_spawned(device, world, job))


@pytest.mark.parametrize("device, world", _worlds(4, exact=True))
def test_mesh_without_sp_dimension_is_refused(device, world):
    for rank, message in enumerate(_spawned(device, world, "mesh_without_sp_dim")):
        assert message is not None and "'sp'" in message and "('dp', 'tp')" in message, f"rank {rank}: {message}"


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("device, world", _worlds(2, exact=True))
def test_exchange_starts_where_it_is_needed(device, world, method, direction):
    """The forward's all-gather is issued as soon as the local state exists (the output kernel
    needs its result), the backward's only when the late gradient is asked for (after dq: run
    alongside dq, NCCL's kernels slowed it); the backward's last ring send goes at once (that rank
    receives nothing); the other ring links wait until the late state is asked for."""
    expected = {  # per rank (0, 1), P = 2
        ("allgather", "forward"): [["_all_gather_single", "begun", "finished"]] * 2,
        ("allgather", "backward"): [["begun", "_all_gather_single", "finished"]] * 2,
        ("ring", "forward"): [["begun", "_send", "finished"], ["begun", "_recv", "finished"]],
        ("ring", "backward"): [["begun", "_recv", "finished"], ["_send", "begun", "finished"]],
    }[method, direction]
    assert _spawned(device, world, ("exchange_order", (method, direction))) == expected
