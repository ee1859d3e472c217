"""Kernel launches that skip Triton's per-call Python work once a specialization is compiled.

`kernel[grid](*args)` binds, specializes and hashes every argument on every call, host time of
the order of the kernels' own at long sequences. `launch` takes that path once per call
signature (ints and floats by value, tensors by dtype and 16-byte alignment, the constexprs, the
device) and then hands the arguments straight to the compiled launcher; Triton's own path stays
under TRITON_INTERPRET=1, with launch hooks, for non-kernels and with LASP_FX_FAST_LAUNCH=0.
"""

from __future__ import annotations

import os

import torch
from triton import knobs
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from lasp_fx.ops.triton.common import INTERPRET

ENABLED = not INTERPRET and os.environ.get("LASP_FX_FAST_LAUNCH", "1") != "0"
_MAX_SIGNATURES = 512  # per kernel: past this (sizes that never repeat) Triton's path is as good


class _Compiled:
    """What the first call of one signature left behind: the compiled kernel, the grid's META, the constexpr tail."""

    __slots__ = ("kernel", "meta", "tail")

    def __init__(self, kernel, meta: dict, tail: tuple):
        self.kernel, self.meta, self.tail = kernel, meta, tail


_cache: dict = {}  # (kernel, device, signature) -> _Compiled: a cache of compiled objects, like Triton's own


def signature(args: tuple, constexprs: dict) -> tuple:
    """The call's specialization key: tensors by (dtype, 16-byte aligned), everything else by type and value."""
    return (
        # by type too: True == 1, yet Triton compiles a bool and an int apart
        tuple((a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else (a.__class__, a) for a in args),
        tuple((name, value.__class__, value) for name, value in constexprs.items()),
    )


def launch(kernel, grid, *args, **constexprs):
    """`kernel[grid](*args, **constexprs)`, straight to the compiled launcher after the first call.

    Runtime arguments go by position, constexprs (and options such as num_warps) by keyword,
    the same as the kernel's parameter order (runtime parameters first).
    """
    if not ENABLED or not isinstance(kernel, (JITFunction, Autotuner)) or _hooks_set():
        return kernel[grid](*args, **constexprs)
    device = torch._C._cuda_getDevice()
    key = (kernel, device, signature(args, constexprs))
    hit = _cache.get(key)
    if hit is None:
        return _first_call(kernel, key, grid, args, constexprs)
    g = grid(hit.meta) if callable(grid) else grid
    compiled = hit.kernel
    stream = torch._C._cuda_getCurrentRawStream(device)
    compiled.run(
        g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1, stream, compiled.function,
        compiled.packed_metadata, None, None, None, *args, *hit.tail,
    )  # fmt: skip
    return compiled


def forget(kernel) -> None:
    """Drop what `launch` keeps for `kernel` (after changing its autotune configs, say)."""
    for key in [key for key in _cache if key[0] is kernel]:
        del _cache[key]


def _hooks_set() -> bool:
    # Triton 3.6 keeps each hook as a HookChain, never None: set means a chain with calls in it
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    return any(hook is not None and getattr(hook, "calls", True) for hook in hooks)


def _first_call(kernel, key, grid, args, constexprs):
    compiled = kernel[grid](*args, **constexprs)
    if hasattr(compiled, "result"):  # an asynchronous compile
        compiled = compiled.result()
    jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
    while not isinstance(jit, JITFunction):  # an autotuner around a heuristics wrapper, etc.
        jit = jit.fn
    meta = dict(constexprs)
    if isinstance(kernel, Autotuner):
        # The config this call ran: Triton keeps it on the autotuner (as it keeps the call's
        # arguments there, so one autotuned kernel is not for two threads at once in Triton either).
        config = kernel.best_config
        if config.pre_hook is not None:
            return compiled  # a hook that must run before every launch: Triton's path runs it
        meta.update(config.all_kwargs())
    params = jit.params
    if len(args) > len(params) or any(p.is_constexpr for p in params[: len(args)]):
        return compiled  # not the calling convention above: keep Triton's path for it (no entry)
    tail = []
    for p in params[len(args) :]:
        if p.name in meta:
            tail.append(meta[p.name])
        elif p.has_default:
            tail.append(p.default)
        else:
            return compiled
    per_kernel = sum(1 for k in _cache if k[0] is kernel)
    if per_kernel < _MAX_SIGNATURES:
        _cache[key] = _Compiled(compiled, meta, tuple(tail))
    return compiled
