"""Spawned-rank workers for the failure tests: one rank fails, raises, dies or disagrees; the others report.

Each returns {"error": type name or None, "message": str, "seconds": time to the error} for the
parent to check that every rank ended within the bound, with a lasp_fx error naming the culprit.
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

import lasp_fx
from lasp_fx.distributed import lasp as lasp_module
from lasp_fx.ops import chunked

CULPRIT = 1


class _PlantedFailure(RuntimeError):
    pass


class _FailingKernels:
    """chunked's primitives, but fwd raises after the state pass, inside LASP's part of the call."""

    def __getattr__(self, name):
        return getattr(chunked, name)

    @staticmethod
    def fwd(*args, **kwargs):
        raise _PlantedFailure("planted failure in the state pass")


def _inputs(T: int, decay: bool, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shape = (1, T, 2, 4)
    x = {n: torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_() for n in "qkv"}
    if decay:
        x["log_decay"] = (-torch.rand(1, T, 2, generator=gen, dtype=torch.float64)).requires_grad_()
    return x


def _outcome(start: float, error: BaseException | None) -> dict:
    return {"error": None if error is None else type(error).__name__,
            "module": None if error is None else type(error).__module__,
            "message": "" if error is None else str(error), "seconds": time.monotonic() - start}


def op_fault(rank: int, world: int, case: dict) -> dict:
    """The op forward + backward with case["fault"] on rank CULPRIT:
    "bad_input" (a wrong shape: it raises before its exchange and stays alive), "inside" (its
    kernels raise inside the exchange's part of the call), "killed" (the process exits), or
    "length" (a different local length with check=False: only the headers can catch it)."""
    fault, timeout = case["fault"], case["timeout"]
    dist.barrier()  # start together: the timeout measures the fault, not a slow process start
    x = _inputs(8, decay=True)
    check = True
    if rank == CULPRIT:
        if fault == "bad_input":
            x["k"] = x["k"][:, :, :1, :3].detach()  # head_dim 3 against q's 4
        elif fault == "inside":
            lasp_module.kernels_for = lambda q: _FailingKernels()
        elif fault == "killed":
            os._exit(3)
        elif fault == "length":
            x = _inputs(6, decay=True)
    if fault == "length":
        check = False
    start, error = time.monotonic(), None
    try:
        o = lasp_fx.linear_attention(**x, group=dist.group.WORLD, method=case["method"], check=check, timeout=timeout)
        o.sum().backward()
    except Exception as e:  # noqa: BLE001 - what was raised is the result
        error = e
    out = _outcome(start, error)
    if rank == CULPRIT and fault in ("bad_input", "inside"):
        time.sleep(timeout + 1)  # stays alive (a training loop that caught it): the others must not wait for it
    return out


def parallelize_length_change(rank: int, world: int, case: dict) -> list:
    """parallelize(): a first call with equal slices, then one where rank CULPRIT passes a shorter slice."""
    from tests.helpers.workers_parallel import build

    model = lasp_fx.parallelize(build("examples.models:LightningLM"), compiler="eager", inputs="local",
                                method=case["method"], timeout=case["timeout"])
    outcomes = []
    for length in (8, 6 if rank == CULPRIT else 8):
        ids = torch.arange(length).remainder(32)[None]
        dist.barrier()  # the first call compiles for seconds, unevenly: start each call together
        start, error = time.monotonic(), None
        try:
            model(ids, labels=ids).backward()
        except Exception as e:  # noqa: BLE001
            error = e
        outcomes.append(_outcome(start, error))
        if error is not None:
            break
    return outcomes


def device_mismatch(rank: int, world: int, method: str) -> dict:
    """The CUDA path's check (run on CPU with LASP_FX_DEVICE_CHECKS=1): rank CULPRIT passes another
    length with check=False; nothing raises, and what depends on a mismatched header is NaN."""
    x = _inputs(6 if rank == CULPRIT else 8, decay=True)
    o = lasp_fx.linear_attention(**x, group=dist.group.WORLD, method=method, check=False, timeout=30.0)
    o.sum().backward()
    return {"o finite": bool(torch.isfinite(o).all()),
            "grads finite": all(bool(torch.isfinite(t.grad).all()) for t in x.values())}


def later_mismatch(rank: int, world: int, method: str) -> list:
    """The CUDA path (LASP_FX_DEVICE_CHECKS=1): three steps of forward + backward with check=False, rank
    world - 1 passing a shorter slice in the second. Per step: its error, and whether o and the gradients
    were finite; a step that raised ends the run (the next would be the user's to decide)."""
    outcomes = []
    for step in range(3):
        x = _inputs(6 if step == 1 and rank == world - 1 else 8, decay=True, seed=step)
        start, error, finite = time.monotonic(), None, None
        try:
            o = lasp_fx.linear_attention(**x, group=dist.group.WORLD, method=method, check=False, timeout=30.0)
            o.sum().backward()
            finite = bool(torch.isfinite(o).all()) and all(bool(torch.isfinite(t.grad).all()) for t in x.values())
        except Exception as e:  # noqa: BLE001 - what was raised is the result
            error = e
        outcomes.append(dict(_outcome(start, error), finite=finite))
        if error is not None:
            break
    return outcomes


def parallelize_later_mismatch(rank: int, world: int, method: str) -> list:
    """parallelize() on the CUDA path (LASP_FX_DEVICE_CHECKS=1: after the first call only the state
    headers check): three steps, rank world - 1 passing a shorter slice in the second. Per step: its
    error, and whether the loss was finite."""
    from tests.helpers.workers_parallel import build

    model = lasp_fx.parallelize(build("examples.models:LightningLM"), compiler="eager", inputs="local",
                                method=method, timeout=60.0)
    outcomes = []
    for step in range(3):
        ids = torch.arange(6 if step == 1 and rank == world - 1 else 8).remainder(32)[None]
        dist.barrier()  # the first call compiles for seconds, unevenly: start each step together
        start, error, finite = time.monotonic(), None, None
        try:
            loss = model(ids, labels=ids)
            loss.backward()
            finite = bool(torch.isfinite(loss))
        except Exception as e:  # noqa: BLE001
            error = e
        outcomes.append(dict(_outcome(start, error), finite=finite))
        if error is not None:
            break
    return outcomes
