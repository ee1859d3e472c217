"""Float64 evaluation of a captured graph on the CPU, and of parts of it with some values replaced.

The probes compare a region of the user's graph with its replacement on random inputs; doing
that in float64 (every floating tensor, parameter and dtype argument upcast) makes a relative
error of 1e-9 a safe verdict for "the same function". Every replay runs on the CPU whatever
device the model lives on (tensors copied, device arguments rewritten), so the probes, which
build their own random tensors on the CPU, meet the graph's values on one device, and the
verdicts are the same for a model on CPU or CUDA.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable

import torch
from torch.fx import GraphModule, Node
from torch.utils._pytree import tree_map

from lasp_fx.passes.graph import _hint, shape, source_of, val

_LOW = (torch.float16, torch.bfloat16, torch.float32)
_LARGEST_GIB = float(os.environ.get("LASP_FX_REPLAY_GIB", "4"))  # one replayed value, in float64


class ReplayTooLarge(ValueError):
    """Replaying the graph in float64 would hold a value too large for the CPU."""


_CPU = torch.device("cpu")


def upcast(x: Any) -> Any:
    """Tensors -> CPU (float16/bfloat16/float32 ones -> float64), low float dtypes -> float64,
    devices -> CPU; everything else unchanged."""
    if isinstance(x, torch.Tensor) and x.dtype in _LOW:
        return x.detach().to(device=_CPU, dtype=torch.float64)
    if isinstance(x, torch.Tensor):
        return x.detach().to(_CPU)
    if isinstance(x, torch.device):
        return _CPU
    if isinstance(x, torch.SymInt):  # a symbolic size in the example inputs: its example value
        return _hint(x)
    if isinstance(x, torch.dtype) and x in _LOW:
        return torch.float64
    return x


def _lift(x: Any) -> Any:
    """`upcast`, except that a float64 CPU tensor that requires grad (a probe's input, or a value
    derived from one) is kept as is, so a replay under `grad=True` is differentiable in it."""
    if isinstance(x, torch.Tensor) and x.requires_grad and x.dtype == torch.float64 and x.device == _CPU:
        return x
    return upcast(x)


def _own(x: Any, orig: Any) -> Any:
    """`x` (the upcast of `orig`), copied when it still shares `orig`'s memory (an int or
    float64 CPU tensor): an in-place op of the replay (a step counter's `add_`) must not reach
    the model's buffers or the caller's inputs."""
    if isinstance(x, torch.Tensor) and isinstance(orig, torch.Tensor) and orig.device == _CPU \
            and x.untyped_storage().data_ptr() == orig.untyped_storage().data_ptr():
        return x.clone()
    return x


def _fetch_attr(gm: GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def run_node(gm: GraphModule, node: Node, env: dict, fallback: "Values | None" = None):
    """Execute one node in float64 with arguments from `env` (or `fallback`)."""

    def load(n: Node):
        if n in env:
            return env[n]
        if fallback is not None:
            return fallback[n]
        raise KeyError(f"no value for {n.name}")

    args = tree_map(_lift, torch.fx.node.map_arg(node.args, load))
    kwargs = tree_map(_lift, torch.fx.node.map_arg(node.kwargs, load))
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    if node.op == "call_module":
        return gm.get_submodule(node.target)(*args, **kwargs)
    if node.op == "get_attr":
        attr = _fetch_attr(gm, node.target)
        return _own(upcast(attr), attr)
    raise ValueError(f"cannot evaluate node {node.name} ({node.op})")


class Values:
    """The float64 value of every node of `gm` for the example inputs (computed once, no grad)."""

    def __init__(self, gm: GraphModule, flat_inputs: Iterable[Any]):
        self.gm = gm
        self._env: dict[Node, Any] = {}
        inputs = iter(list(flat_inputs))
        with torch.no_grad():
            for node in gm.graph.nodes:
                if node.op == "placeholder":
                    x = next(inputs)
                    self._env[node] = _own(upcast(x), x)
                elif node.op != "output":
                    self._env[node] = run_node(gm, node, self._env)

    def __getitem__(self, node: Node):
        return self._env[node]

    def evaluate(self, nodes: Iterable[Node], overrides: dict[Node, Any], grad: bool = False) -> dict[Node, Any]:
        """Re-run `nodes` (in graph order) with `overrides` in place of some values; with `grad`,
        under autograd, so the results are differentiable in the overrides that require grad."""
        env = dict(overrides)
        with torch.enable_grad() if grad else torch.no_grad():
            for node in nodes:
                if node not in env:
                    env[node] = run_node(self.gm, node, env, fallback=self)
        return env


def check_replay_size(gm: GraphModule) -> None:
    """Refuse before allocating when one value of the replay would pass _LARGEST_GIB: a graph whose
    sequence length is static is replayed at that length, where the model's T x T masks cost
    T * T * 8 bytes a head (128 GiB at 128K tokens)."""
    worst, where = 0.0, None
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module") and val(node) is not None:
            gib = math.prod(shape(node)) * 8 / 2**30
            if gib > worst:
                worst, where = gib, node
    if worst > _LARGEST_GIB:
        line, code = source_of(where)
        raise ReplayTooLarge(
            f"lasp_fx proves each match by replaying the graph in float64 on the CPU, and at this static "
            f"sequence length one value ({where.target} at {line}: {code.strip()}, shape {shape(where)}) would take "
            f"{worst:.3g} GiB. Mark the sequence length dynamic so the replay uses a short prefix: "
            "torch.compile(..., dynamic=True) or torch._dynamo.mark_dynamic(x, seq_dim) "
            "(parallelize() does this itself); LASP_FX_REPLAY_GIB raises the limit."
        )
