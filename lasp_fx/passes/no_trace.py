"""Tracing leaves no trace: caches that a capture filled with fake tensors are emptied after it.

A module-level `functools.lru_cache` helper (a position table keyed by the length, say) called
while torch.export traces the model stores the FakeTensor it returned; the next eager call gets
that FakeTensor back and fails far from the cause. Every lru_cache in the modules that define the
model's submodules is watched; one whose size grew during the capture is cleared.
"""

from __future__ import annotations

import contextlib
import functools
import sys

import torch


def _caches(model: torch.nn.Module) -> list:
    modules = {type(m).__module__ for m in model.modules()}
    out, seen = [], set()
    for name in modules:
        mod = sys.modules.get(name)
        for obj in list(vars(mod).values()) if mod is not None else []:
            if isinstance(obj, functools._lru_cache_wrapper) and id(obj) not in seen:
                seen.add(id(obj))
                out.append(obj)
    return out


@contextlib.contextmanager
def caches_restored(model: torch.nn.Module):
    """Within the block, trace freely; after it, every lru_cache of the model's modules that grew
    is cleared (its entries may hold fake tensors)."""
    caches = _caches(model)
    before = [c.cache_info().currsize for c in caches]
    try:
        yield
    finally:
        for c, n in zip(caches, before):
            if c.cache_info().currsize != n:
                c.cache_clear()
