"""Run a function on W spawned processes joined by one process group; errors come back with tracebacks.

Each child uses one thread, joins through a FileStore in a fresh temporary directory (gloo on
the CPU, NCCL on CUDA with rank r on cuda:r), runs `fn(rank, world_size, *args)` and always
destroys the group; `fn` must be importable by name and its arguments and result must pickle
(docs/design.md §7).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback
from datetime import timedelta


_GRACE_S = 10.0


class SpawnedError(RuntimeError):
    """A spawned rank raised, timed out or died; the message holds each failing rank's traceback."""


def devices() -> list[str]:
    """The devices the tests run on: the CPU always, CUDA as well where a GPU is present."""
    return ["cpu"] + (["cuda"] if _cuda_count() else [])


def world_sizes(device: str, sizes) -> list[int]:
    """The world sizes a multi-rank test takes on `device`: every size on the CPU (gloo processes);
    on CUDA one rank per GPU, so sizes above the GPU count become the GPU count and duplicates go
    (one GPU: a group of one)."""
    if device == "cpu":
        return list(sizes)
    return sorted({min(p, _cuda_count()) for p in sizes})


def device_worlds(*sizes, exact: bool = False) -> list:
    """pytest parameters (device, world_size), ids "cpu-P2", "cuda-P1", ...: `world_sizes` on every
    device of `devices()`; with exact=True only the sizes a device can hold as they are (a 2 x 2 mesh
    needs 4 ranks)."""
    import pytest

    pairs = [(d, p) for d in devices() for p in world_sizes(d, sizes) if not exact or p in sizes]
    return [pytest.param(d, p, id=f"{d}-P{p}") for d, p in pairs]


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_spawned(fn, world_size: int, *args, device: str = "cpu", backend: str | None = None,
                timeout: float = 120.0, pg_timeout: float = 60.0, may_die: tuple = ()) -> list:
    """Run `fn(rank, world_size, *args)` on `world_size` fresh processes and return their results.

    Args:
        fn: module-level function; it runs after `torch.distributed` is initialised.
        world_size: number of processes (ranks 0 .. world_size - 1).
        *args: passed to every rank.
        device: "cpu", or "cuda": rank r selects cuda:r before joining the group (one GPU a rank).
        backend: process-group backend (default: "gloo" on the CPU, "nccl" on CUDA).
        timeout: seconds the parent waits for all ranks before killing them.
        pg_timeout: the process group's own timeout, so a rank stuck in a collective errors out.
        may_die: ranks that are meant to exit without a result (fault tests): their result is
            None and the others are still waited for.

    Returns:
        The list of results, indexed by rank.

    Raises:
        SpawnedError: a rank raised (its traceback is in the message), died or did not finish.
        ValueError: an unknown device, or more CUDA ranks than GPUs.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and world_size > _cuda_count():
        raise ValueError(f"{world_size} CUDA ranks need {world_size} GPUs, this machine has {_cuda_count()}: "
                         "parametrise the test with device_worlds(...) (sizes collapse to the GPU count)")
    backend = backend or ("nccl" if device == "cuda" else "gloo")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="lasp_spawn_") as tmp:
        store = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_child, args=(fn, rank, world_size, store, device, backend, pg_timeout, args, results),
                        daemon=True)
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        try:
            got = _collect(results, procs, timeout, may_die)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(5)
    failures = {r: tb for r, (ok, tb) in got.items() if not ok and r not in may_die}
    missing = [r for r in range(world_size) if r not in got]
    if failures or missing:
        parts = [f"--- rank {r} raised:\n{tb}" for r, tb in sorted(failures.items())]
        if missing:
            parts.append(f"--- ranks {missing} did not report within {timeout:.0f} s (hung or died)")
        raise SpawnedError(f"{getattr(fn, '__name__', fn)} on {world_size} ranks failed:\n" + "\n".join(parts))
    return [None if r in may_die and not got[r][0] else got[r][1] for r in range(world_size)]


def _collect(results, procs, timeout: float, may_die: tuple = ()) -> dict:
    got, deadline = {}, time.monotonic() + timeout
    while len(got) < len(procs) and time.monotonic() < deadline:
        try:
            rank, ok, value = results.get(timeout=0.2)
            got[rank] = (ok, value)
            if not ok:  # the others may now wait in a collective: give them a moment to fail too
                deadline = min(deadline, time.monotonic() + _GRACE_S)
        except queue.Empty:
            dead = [r for r, p in enumerate(procs) if not p.is_alive() and p.exitcode != 0 and r not in got]
            for r in dead:
                got[r] = (False, f"process exited with code {procs[r].exitcode} without a result")
            if any(r not in may_die for r in dead):  # died unplanned (a segfault): the others would wait forever
                break
    return got


def _child(fn, rank, world_size, store_path, device, backend, pg_timeout, args, results):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if device == "cuda":  # before the group: NCCL binds each rank to its current device
            torch.cuda.set_device(rank)
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=pg_timeout))
        try:
            results.put((rank, True, fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:  # noqa: BLE001 - everything goes back to the parent
        results.put((rank, False, traceback.format_exc()))
