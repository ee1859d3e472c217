"""Why a sequence length that parallelize() marked dynamic came out fixed in dynamo's graph.

Dynamo specialises a dynamic size when the model's Python code needs its value: a loop over
chunks (`range(T // c)`), a branch on the length, `.item()` / `int(size)` or a reshape to
hard-coded sizes. The shape environment records each such decision as a guard with the user's
line; the first guard that pins the sequence size names it.
"""

from __future__ import annotations

import glob
import os
import re

import sympy
import torch
from torch.utils import _traceback as torch_traceback

from lasp_fx.passes.graph import short_path

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
                loc = _user_line(getattr(guard.sloc, "maybe_user_loc", None))
                if loc:
                    return f"the length was fixed to one value ({expr}) by the model's code at {loc}"
    except Exception:  # noqa: BLE001 - the explanation must never hide the error it explains
        pass
    return _GENERIC


# torch keeps a guard's user frame only as `code  # FILE:LINE in fn`, FILE cut by its common path
# with torch's parent folder: "ork/wt/m.py" for "/work/wt/m.py" (the common path "/" and one more
# character cut). The ancestors of that folder give the candidates; the one that exists is the file.
_TORCH_BASE = os.path.dirname(os.path.dirname(os.path.abspath(torch_traceback.__file__)))
_FRAME = re.compile(r"^(?:(?P<code>.*)  # )?(?P<file>.+):(?P<line>\d+) in (?P<fn>.*)$", re.S)


def _user_line(loc: str | None) -> str | None:
    """`file:LINE: code` of torch's formatted frame, the file as short_path writes it."""
    m = _FRAME.match(loc or "")
    if m is None:
        return loc
    path = _full_path(m["file"])
    where = f"{short_path(path) if path else m['file']}:{m['line']}"
    return f"{where}: {m['code'].strip()}" if m["code"] else where


def _full_path(cut: str) -> str | None:
    if os.path.isabs(cut):
        return cut if os.path.isfile(cut) else None
    folder = _TORCH_BASE
    while True:
        parent = os.path.dirname(folder)
        if parent == folder:  # the root: one character of the next folder's name was cut too
            found = glob.glob(os.path.join(folder, "?" + glob.escape(cut)))
            return found[0] if len(found) == 1 else None
        if os.path.isfile(os.path.join(folder, cut)):
            return os.path.join(folder, cut)
        folder = parent
