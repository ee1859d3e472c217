"""Why a sequence length that parallelize() marked dynamic came out fixed in dynamo's graph.

Dynamo specialises a dynamic size when the model's Python code needs its value: a loop over
chunks (`range(T // c)`), a branch on the length, `.item()` / `int(size)` or a reshape to
hard-coded sizes. The shape environment records each such decision as a guard with the user's
line; the first guard that pins the sequence size names it.
"""

from __future__ import annotations

import sympy
import torch

_GENERIC = ("the model's code fixed the length while tracing: a Python loop over chunks of the sequence "
            "(range(T // chunk)), .item() / int() of a size, a branch on the length, or a reshape to "
            "hard-coded sizes; write it with tensor ops on symbolic sizes")


def _shape_env(example_inputs):
    fake_mode = torch._guards.detect_fake_mode(example_inputs)
    if fake_mode is None:
        ctx = torch._guards.TracingContext.try_get()
        fake_mode = ctx.fake_mode if ctx is not None else None
    return getattr(fake_mode, "shape_env", None)


def _seq_symbols(shape_env, seq_dim: int) -> set:
    out = set()
    for sym, sources in getattr(shape_env, "var_to_sources", {}).items():
        for src in sources:
            if getattr(src, "idx", None) == seq_dim and "SIZE" in str(getattr(src, "prop", "")):
                out.add(sym)
    return out


def why_fixed(example_inputs, seq_dim: int) -> str:
    """A sentence naming the line that pinned the sequence size, or what could have."""
    try:
        env = _shape_env(example_inputs)
        syms = _seq_symbols(env, seq_dim) if env is not None else set()
        for guard in getattr(env, "guards", []) if syms else []:
            expr = guard.expr
            if isinstance(expr, sympy.Eq) and expr.free_symbols & syms:
                loc = getattr(guard.sloc, "maybe_user_loc", None)
                if loc:
                    return f"the length was fixed to one value ({expr}) by the model's code at: {loc}"
    except Exception:  # noqa: BLE001 - the explanation must never hide the error it explains
        pass
    return _GENERIC
