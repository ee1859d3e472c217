"""Causality probe of the whole graph: do earlier outputs move when only later tokens change?

LASP computes causal attention; a model whose outputs at positions <= t depend on tokens after t
(a max over the whole sequence inside a feature map, say) is not what sequence parallelism can
preserve, whatever the attention is rewritten into. The graph is replayed in float64 with the
user inputs changed after position t along dim 1 (the sequence, as parallelize() slices it); when
an output moves before t, the first value that moved is reported with its source line.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from lasp_fx.passes.detect.context import Context
from lasp_fx.passes.graph import descendants, shape
from lasp_fx.passes.match import NearMiss
from lasp_fx.passes.detect.values import Values, upcast

FAMILY = "causality"
SEQ_DIM = 1


def near_misses(ctx: Context) -> list[NearMiss]:
    try:
        return _probe(ctx)
    except Exception:  # noqa: BLE001 - a probe that cannot run proves nothing and refuses nothing
        return []


def _probe(ctx: Context) -> list[NearMiss]:
    placeholders = [n for n in ctx.gm.graph.nodes if n.op == "placeholder"]
    user = [(n, x) for n, x in zip(placeholders, ctx.example_inputs)
            if n in ctx.dynamic and n not in ctx.learnable and isinstance(x, torch.Tensor) and x.dim() > SEQ_DIM
            and x.dtype != torch.bool]
    if not user:
        return []
    T = min(int(x.shape[SEQ_DIM]) for _, x in user)
    if T < 4:
        return []
    # a max over the sequence moves only when a changed token beats the kept ones: a few tries,
    # keeping half the tokens or only the first, with fresh values each time
    downstream = descendants([n for n, _ in user])
    nodes = [n for n in ctx.gm.graph.nodes if n in downstream and n.op not in ("placeholder", "output")]
    outputs = [o for o in _flat_nodes(ctx.gm.graph.output_node().args) if _tensor(ctx.values, o)]
    for seed, t in enumerate((T // 2 - 1, 0, T // 2 - 1, 0)):
        gen = torch.Generator().manual_seed(seed)
        overrides = {n: _perturbed(upcast(x), t, gen) for n, x in user}
        # only what depends on the changed inputs is re-run; parameters and the rest: ctx.values
        moved = _Moved(ctx.values, ctx.values.evaluate(nodes, overrides))
        if any(_corner_moved(ctx.values[o], moved[o], T, t) for o in outputs):
            return [_culprit(ctx, moved, T, t)]
    return []


def _culprit(ctx: Context, moved, T: int, t: int) -> NearMiss:
    """The first value (in graph order) whose positions up to t moved, or that has no sequence
    dimension and changed (a reduction over the sequence)."""
    for node in ctx.gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr") or not _tensor(ctx.values, node):
            continue
        a, b = ctx.values[node], moved[node]
        if (T in a.shape and _corner_moved(a, b, T, t)) or (T not in a.shape and a.shape == b.shape and not _same(a, b)):
            return _report(ctx, node, t)
    return _report(ctx, ctx.gm.graph.output_node(), t)


class _Moved:
    """The replay with the later tokens changed: re-run values, else the original ones."""

    def __init__(self, values: Values, env: dict):
        self.values, self.env = values, env

    def __getitem__(self, node: Node):
        return self.env[node] if node in self.env else self.values[node]


def _report(ctx: Context, node: Node, t: int) -> NearMiss:
    return ctx.near_miss(FAMILY, node, f"not causal: changing only the tokens after position {t} changes this value "
                         "and the outputs before it (a reduction over the whole sequence?); sequence parallelism "
                         "cannot preserve that")


def _flat_nodes(args):
    if isinstance(args, Node):
        yield args
    elif isinstance(args, (list, tuple)):
        for a in args:
            yield from _flat_nodes(a)
    elif isinstance(args, dict):
        for a in args.values():
            yield from _flat_nodes(a)


def _tensor(values: Values, node: Node) -> bool:
    try:
        return isinstance(values[node], torch.Tensor) and shape(node) is not None
    except KeyError:
        return False


def _perturbed(x: torch.Tensor, t: int, gen) -> torch.Tensor:
    x = x.clone()
    tail = x.narrow(SEQ_DIM, t + 1, x.shape[SEQ_DIM] - t - 1)
    if x.is_floating_point():
        tail.copy_(3.0 * torch.randn(tail.shape, generator=gen, dtype=x.dtype))
    else:  # token ids: other ids of the same input (in range by construction)
        flat = x.flatten()
        tail.copy_(flat[torch.randint(0, flat.numel(), tail.shape, generator=gen)])
    return x


def _corner_moved(a, b, T: int, t: int) -> bool:
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    for d, n in enumerate(a.shape):
        if n == T:
            a, b = a.narrow(d, 0, t + 1), b.narrow(d, 0, t + 1)
    return not _same(a, b)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    scale = float(a.abs().max()) if a.numel() else 0.0
    return bool(((a - b).abs() <= 1e-9 * max(scale, 1e-30)).all())
