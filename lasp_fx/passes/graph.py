"""Small FX helpers shared by the passes: op classes, shapes, reachability and source lines."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from typing import Iterable

import sympy
import torch
from torch.fx import Graph, Node

aten = torch.ops.aten
SOURCE_NAME = "lasp_fx_source_name"  # node.meta key: dynamo's placeholder name, kept by capture_dynamo_graph

# Ops that only move, copy or re-type data: they never mix positions or features.
LAYOUT_OPS = {
    aten.transpose.int, aten.permute.default, aten.t.default, aten.mT.default, aten.view.default,
    aten.reshape.default, aten._unsafe_view.default, aten.expand.default, aten.clone.default,
    aten.contiguous.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
    aten.squeeze.default, aten.alias.default, aten._to_copy.default, aten.to.dtype,
    aten.to.dtype_layout, aten.type_as.default, aten.detach.default, aten.lift_fresh_copy.default,
}
# Ops that are elementwise in their tensor arguments but not tagged pointwise.
_EXTRA_ELEMENTWISE = {aten.tril.default, aten.triu.default, aten.masked_fill.Scalar, aten.masked_fill.Tensor,
                      aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf}


def val(node) -> torch.Tensor | None:
    """The fake (or example) value recorded on a node, or None."""
    if not isinstance(node, Node):
        return None
    v = node.meta.get("val", node.meta.get("example_value"))
    return v if isinstance(v, torch.Tensor) else None


def shape(node) -> tuple[int, ...] | None:
    v = val(node)
    return None if v is None else tuple(_hint(s) for s in v.shape)


_PROBE_SIZES: contextvars.ContextVar[dict] = contextvars.ContextVar("lasp_fx_probe_sizes", default={})


@contextlib.contextmanager
def probe_sizes(sizes: dict):
    """Within the block, symbolic sizes take these values (sympy symbol -> int) instead of their
    example values: the probes of a graph traced on a 32K-token slice replay it on a few dozen
    tokens, where the user's T x T masks cost kilobytes, not gigabytes."""
    token = _PROBE_SIZES.set(dict(sizes))
    try:
        yield
    finally:
        _PROBE_SIZES.reset(token)


def _hint(s) -> int:
    """A size as an int; a symbolic size gives its probe or example value without adding a guard."""
    if isinstance(s, torch.SymInt):
        expr, sizes = s.node.expr, _PROBE_SIZES.get()
        if sizes and expr.free_symbols & sizes.keys():
            expr = sympy.sympify(expr.xreplace({k: sympy.Integer(v) for k, v in sizes.items()}))
            return int(expr) if not expr.free_symbols else int(s.node.shape_env.size_hint(expr))
        hint = s.node.hint
        return int(hint) if hint is not None else int(s.node.shape_env.size_hint(expr))
    return int(s)


def is_elementwise(node: Node) -> bool:
    t = node.target
    if node.op != "call_function" or not isinstance(t, torch._ops.OpOverload):
        return False
    return t in _EXTRA_ELEMENTWISE or torch.Tag.pointwise in t.tags


def is_source(node: Node) -> bool:
    """Graph inputs: user inputs, parameters and buffers (placeholders or get_attr)."""
    return node.op in ("placeholder", "get_attr")


def ancestors(nodes: Iterable[Node], stop: set[Node] | None = None) -> set[Node]:
    """All nodes that `nodes` depend on (inclusive), not walking past `stop`."""
    stop = stop or set()
    return _reach(nodes, lambda n: () if n in stop else n.all_input_nodes)


_ARANGE = {aten.arange.default, aten.arange.start, aten.arange.start_step}


def sizes_as_numbers(node: Node) -> list:
    """The symbolic sizes (SymInt / SymFloat) an ATen call takes where it takes a number or a tensor: a
    length used as a value (`x.sum(1) / n`), not as a shape; arange's bounds make positions, not values."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or target in _ARANGE:
        return []
    found = []
    for arg, value in zip(target._schema.arguments, node.args):
        if str(arg.type) in ("number", "float", "Optional[float]", "Tensor") and isinstance(value, Node):
            v = value.meta.get("val", value.meta.get("example_value"))
            if isinstance(v, (torch.SymInt, torch.SymFloat)) and v.node.expr.free_symbols:
                found.append(v)
    return found


def descendants(nodes: Iterable[Node]) -> set[Node]:
    """All nodes that depend on `nodes` (inclusive)."""
    return _reach(nodes, lambda n: n.users)


def _reach(nodes: Iterable[Node], step) -> set[Node]:
    seen, todo = set(), list(nodes)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(step(n))
    return seen


def topo_order(graph: Graph) -> dict[Node, int]:
    return {n: i for i, n in enumerate(graph.nodes)}


def region_between(starts: Iterable[Node], end: Node) -> set[Node]:
    """Nodes on some path from one of `starts` (exclusive) to `end` (inclusive)."""
    starts = set(starts)
    return (descendants(starts) & ancestors([end], stop=starts)) - starts


def _einops_dir() -> tuple[str, ...]:
    try:
        import einops
    except ImportError:
        return ()
    return (os.path.dirname(einops.__file__),)


# torch, lasp_fx and einops: their frames are never the user's line (nor is the standard
# library's, _STDLIB, whose directory holds site-packages: those are third parties' files)
_SKIP_DIRS = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
              *_einops_dir())
_STDLIB = os.path.dirname(os.__file__)


def is_library_path(path: str) -> bool:
    """Whether a source file belongs to torch or lasp_fx (not to the user or a third party).
    Directories are compared whole: `site-packages/torchscale/...` is not under `.../torch`."""
    if path.startswith("<"):  # generated code (<eval_with_key>, <string>)
        return True
    p = os.path.abspath(path)
    parts = p.split(os.sep)
    if p.startswith(_STDLIB + os.sep) and "site-packages" not in parts and "dist-packages" not in parts:
        return True
    return any(p == d or p.startswith(d + os.sep) for d in _SKIP_DIRS)


def _user_frames(stack_trace: str) -> list[tuple[str, int, str, str | None]]:
    lines = stack_trace.splitlines()
    frames = []
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith('File "') and ", line " in s:
            path = s[6:s.index('"', 6)]
            lineno = int(s.split(", line ")[1].split(",")[0])
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            fn = s.split(", in ", 1)[1].strip() if ", in " in s else None
            frames.append((path, lineno, code, fn))
    return frames


def source_of(node: Node) -> tuple[str, str]:
    """("file.py:LINE", "the code on that line") of the user's code that created the node."""
    frames = _user_frames(node.meta.get("stack_trace") or "")
    user = [f for f in frames if not is_library_path(f[0])]
    if not (user or frames):
        return "<unknown>", ""
    path, lineno, code, _ = (user or frames)[-1]
    return f"{short_path(path)}:{lineno}", code


def source_function(node: Node) -> str | None:
    """The name of the function holding `source_of(node)`'s line (None when unknown)."""
    frames = _user_frames(node.meta.get("stack_trace") or "")
    user = [f for f in frames if not is_library_path(f[0])]
    return (user or frames)[-1][3] if (user or frames) else None


def short_path(path: str) -> str:
    """`path` as a user reads it: relative to the working directory when under it, from the
    package's folder for an installed package (`transformers/models/...`), else whole."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    if not rel.startswith(".."):
        return rel
    parts = os.path.abspath(path).split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("site-packages", "dist-packages"):
            return os.sep.join(parts[i + 1:])
    return path


def module_path(node: Node) -> str:
    """The FQN of the innermost module the node was created in ("" at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    fqn = list(stack.values())[-1][0]
    return re.sub(r"^L\['[^']*'\]\.?", "", fqn)  # dynamo spells the root module L['self']
