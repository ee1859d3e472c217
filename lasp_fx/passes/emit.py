"""The replacement of a candidate: permutes into [B, T, H, D], one op call, permutes back.

One builder serves both the probe (tensors, `Eager`) and the rewrite (FX nodes, `GraphEmitter`),
so what the probe verifies is exactly what the rewrite inserts.
"""

from __future__ import annotations

import math
import operator

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from lasp_fx.ops import op as _op  # noqa: F401  (registers torch.ops.lasp_fx)
from lasp_fx.ops.chunked import acc_dtype
from lasp_fx.passes.graph import aten, shape, val
from lasp_fx.passes.match import Candidate, Layout

LASP_OP = torch.ops.lasp_fx.linear_attention.default


class NotRepresentable(ValueError):
    """The candidate's layout cannot be fed to the op."""


class Eager:
    """Runs each op on tensors (for the probes)."""

    def __call__(self, target, *args, **kwargs):
        return target(*args, **kwargs)

    def const(self, tensor: torch.Tensor, name: str):
        return tensor


class GraphEmitter:
    """Inserts each op as a node before `where`, with fake values and the source info of `where`."""

    def __init__(self, gm: GraphModule, where: Node):
        self.gm, self.where = gm, where
        vals = [v for v in (val(n) for n in gm.graph.nodes) if v is not None]
        self.fake_mode = torch._guards.detect_fake_mode(vals)
        self.nodes: list[Node] = []

    def __call__(self, target, *args, **kwargs):
        with self.gm.graph.inserting_before(self.where):
            node = self.gm.graph.call_function(target, args, kwargs)
        fa = map_arg(args, lambda n: n.meta["val"])
        fk = map_arg(kwargs, lambda n: n.meta["val"])
        with self.fake_mode:
            node.meta["val"] = target(*fa, **fk)
        # the source for error messages; the checkpoint tags so that the replacement of a
        # checkpointed region is recomputed in backward like the nodes it replaces
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack", "recompute", "ac_graph_id"):
            if key in self.where.meta:
                node.meta[key] = self.where.meta[key]
        self.nodes.append(node)
        return node

    def const(self, tensor: torch.Tensor, name: str):
        where = self.where.meta.get("val")  # constants come from the float64 CPU replay: to the graph's device
        if isinstance(where, torch.Tensor):
            tensor = tensor.to(where.device)
        i = 0
        while hasattr(self.gm, f"{name}_{i}"):
            i += 1
        self.gm.register_buffer(f"{name}_{i}", tensor, persistent=False)  # not in state_dict
        with self.gm.graph.inserting_before(self.where):
            node = self.gm.graph.get_attr(f"{name}_{i}")
        with self.fake_mode:
            node.meta["val"] = self.fake_mode.from_tensor(tensor)
        return node


def _canonical(emit, x, shp, layout: Layout):
    """Permute to [present batch dims..., seq, feat] and reshape to [beta-aligned sizes..., seq, feat]."""
    named = [d for d in layout.batch if d is not None] + [d for d in (layout.seq, layout.feat) if d is not None]
    rest = [d for d in range(len(shp)) if d not in named]
    if any(shp[d] != 1 for d in rest):
        raise NotRepresentable(f"dims {rest} of a tensor of shape {list(shp)} have no role")
    order = rest + named
    if order != list(range(len(shp))):
        x = emit(aten.permute.default, x, order)
    actual = [shp[d] if d is not None else 1 for d in layout.batch]
    tail = [shp[d] for d in (layout.seq, layout.feat) if d is not None]
    if [shp[d] for d in order] != actual + tail:
        seq = [-1] if layout.seq is not None else []
        x = emit(aten.reshape.default, x, actual + seq + tail[len(seq):])
    return x, actual, tail


def _broadcast(actual: list[int], beta: tuple[int, ...], grouped: bool) -> list[int]:
    """Sizes to expand to: full beta, except a trailing run of kv-head groups when `grouped`."""
    want = list(beta)
    if grouped:
        i0 = next((i for i in range(1, len(beta)) if actual[i] != beta[i]), len(beta))
        if all(a == 1 for a in actual[i0 + 1:]) and (i0 == len(beta) or beta[i0] % actual[i0] == 0):
            want = list(beta[:i0]) + actual[i0:]
    for a, w in zip(actual, want):
        if a not in (1, w):
            raise NotRepresentable(f"batch sizes {actual} cannot be broadcast to {list(beta)}")
    return want


def to_op_layout(emit, x, shp, layout: Layout, beta, grouped: bool = False):
    """A tensor -> [B, T, H(kv), F] (or [B, T, H] without a feature dim)."""
    actual = [shp[d] if d is not None else 1 for d in layout.batch]
    want = _broadcast(actual, beta, grouped)
    tail = [shp[d] for d in (layout.seq, layout.feat) if d is not None]
    b = beta[0] if beta else 1
    if want == actual and None not in layout.batch[:1]:  # one permute (+ a reshape merging heads)
        named = list(layout.batch) + [d for d in (layout.seq, layout.feat) if d is not None]
        rest = [d for d in range(len(shp)) if d not in named]
        if any(shp[d] != 1 for d in rest):
            raise NotRepresentable(f"dims {rest} of a tensor of shape {list(shp)} have no role")
        heads = [d for d in layout.batch[1:] if d is not None]
        order = rest + list(layout.batch[:1]) + [layout.seq] + heads + ([layout.feat] if layout.feat is not None else [])
        if order != list(range(len(shp))):
            x = emit(aten.permute.default, x, order)
        target = [b, tail[0], math.prod(want[1:])] + tail[1:]
        if [shp[d] for d in order] != target:
            x = emit(aten.reshape.default, x, [b, -1] + target[2:])  # -1: the sequence may be symbolic
        return x
    x, actual, tail = _canonical(emit, x, shp, layout)
    if want != actual:
        x = emit(aten.expand.default, x, want + [-1] + tail[1:])
    x = emit(aten.reshape.default, x, [b, math.prod(want[1:]), -1] + tail[1:])
    return emit(aten.transpose.int, x, 1, 2)


def from_op_layout(emit, o, out_shape, layout: Layout, beta):
    """o [B, T, H, E] -> the layout of the node it replaces."""
    canon = {d: i for i, d in enumerate(list(layout.batch) + [layout.seq, layout.feat])}
    perm = [canon[d] for d in sorted(canon)]
    if None not in layout.batch[:1] and len(perm) == len(out_shape) == 4:  # [B, T, H, E] -> one permute
        to_out = {0: 0, 1: 2, 2: 1, 3: 3}  # canonical [B, H, T, E] position -> o dim
        perm = [to_out[p] for p in perm]
        return o if perm == [0, 1, 2, 3] else emit(aten.permute.default, o, perm)
    o = emit(aten.transpose.int, o, 1, 2)
    o = emit(aten.reshape.default, o, list(beta) + [-1, out_shape[layout.feat]])
    if perm != list(range(len(perm))):
        o = emit(aten.permute.default, o, perm)
    if len(out_shape) != len(perm):
        o = emit(aten.reshape.default, o, [-1 if d == layout.seq else n for d, n in enumerate(out_shape)])
    return o


def log_decay(emit, cand: Candidate, env: dict, dtype: torch.dtype):
    """The op's log_decay argument: None, [H] or [B, T, H]."""
    d = cand.decay
    if d.kind == "none":
        return None
    if d.node is None:
        return emit.const(d.value.to(dtype), "_lasp_log_decay")
    x = env[d.node]
    x = emit(aten._to_copy.default, x, dtype=dtype)
    if d.psi == "log":
        x = emit(aten.log.default, x)
    if d.alpha != 1.0:
        x = emit(aten.mul.Tensor, x, d.alpha)
    shp = shape(d.node)
    if d.kind == "gate":
        return to_op_layout(emit, x, shp, d.layout, cand.beta)
    x, actual, _ = _canonical(emit, x, shp, d.layout)
    heads = math.prod(cand.beta[1:])
    if actual[:1] == [1] or not cand.beta:
        x = emit(aten.expand.default, x, [1] + list(cand.beta[1:]))
        return emit(aten.reshape.default, x, [heads])
    x = emit(aten.expand.default, x, list(cand.beta))  # differs per batch element: a [B, T, H] gate
    x = emit(aten.reshape.default, x, [cand.beta[0], 1, heads])
    seq = emit(aten.sym_size.int, env[cand.q], cand.q_layout.seq)
    return emit(aten.expand.default, x, [cand.beta[0], seq, heads])


def kv_heads(cand: Candidate) -> tuple[int, bool]:
    """(number of kv heads fed to the op, whether k and v share heads GQA-style without a copy)."""
    def want(node, layout):
        actual = [shape(node)[d] if d is not None else 1 for d in layout.batch]
        return _broadcast(actual, cand.beta, grouped=True)

    wk, wv = want(cand.k, cand.k_layout), want(cand.v, cand.v_layout)
    grouped = wk == wv  # k and v must have the same heads; else both are expanded to the query heads
    return (math.prod(wk[1:]) if grouped else math.prod(cand.beta[1:])), grouped


def _repeat_heads(emit, x, heads: int):
    have = int(shape_of(x, emit)[2])
    return x if have == heads else emit(aten.repeat_interleave.self_int, x, heads // have, 2)


def build(cand: Candidate, emit, env: dict):
    """Emit the replacement of `cand.out`; `env` maps q, k, v (and the decay node) to inputs."""
    _, shared = kv_heads(cand)
    q = to_op_layout(emit, env[cand.q], shape(cand.q), cand.q_layout, cand.beta)
    k = to_op_layout(emit, env[cand.k], shape(cand.k), cand.k_layout, cand.beta, grouped=True)
    v = to_op_layout(emit, env[cand.v], shape(cand.v), cand.v_layout, cand.beta, grouped=True)
    if not shared:  # k and v have different head counts: repeat both to the query heads
        k, v = (_repeat_heads(emit, x, math.prod(cand.beta[1:])) for x in (k, v))
    E = shape(cand.v)[cand.v_layout.feat]
    if cand.normalised:  # v extended by a column of ones gives the normaliser (docs/design.md §2)
        ones = emit(aten.ones_like.default, emit(aten.slice.Tensor, v, -1, 0, 1))  # no sizes: T may be symbolic
        v = emit(aten.cat.default, [v, ones], -1)
    dtype = acc_dtype(val(cand.q).dtype) if isinstance(emit, GraphEmitter) else torch.float64
    ld = log_decay(emit, cand, env, dtype)
    res = emit(LASP_OP, q, k, v, ld, None, float(cand.scale))
    o = emit(operator.getitem, res, 0)
    rows = _row_scale(emit, cand, ld, q, dtype) if cand.row_power else None
    if cand.normalised:
        num = emit(aten.slice.Tensor, o, -1, 0, E)
        den = emit(aten.slice.Tensor, o, -1, E, E + 1)
        if rows is not None:
            num, den = emit(aten.mul.Tensor, num, rows), emit(aten.mul.Tensor, den, rows)
        if cand.norm_b != 0.0:
            den = emit(aten.add.Tensor, den, cand.norm_b)
        for step in cand.den_steps:  # the model's own detach / abs / clamp of its normaliser
            den = emit(*_STEP_OPS[step[0]], den, *step[1:])
        o = emit(aten.div.Tensor, num, den)
        if cand.norm_a != 1.0:
            o = emit(aten.mul.Tensor, o, cand.norm_a)
    elif rows is not None:
        o = emit(aten.mul.Tensor, o, rows)
    o = from_op_layout(emit, o, shape(cand.out), cand.out_layout, cand.beta)
    if isinstance(emit, GraphEmitter) and val(o).dtype != val(cand.out).dtype:
        o = emit(aten._to_copy.default, o, dtype=val(cand.out).dtype)
    return o


_STEP_OPS = {"detach": (aten.detach.default,), "abs": (aten.abs.default,), "clamp": (aten.clamp.default,)}


def _row_scale(emit, cand: Candidate, ld, q, dtype):
    """[1, T, H, 1]: (sum_{j <= i} decay^(i - j)) ** -row_power at the query's position i. The
    positions are an arange, which the shard pass makes global; the sum is
    expm1(ld * (i + 1)) / expm1(ld) for a constant log-decay ld < 0, and i + 1 without one."""
    seq = emit(aten.sym_size.int, q, 1)
    pos = emit(aten.arange.default, seq, dtype=dtype, device=_device(q))
    n = emit(aten.add.Tensor, emit(aten.reshape.default, pos, [1, -1, 1, 1]), 1.0)  # [1, T, 1, 1]
    if ld is not None:
        ld = emit(aten.reshape.default, ld, [1, 1, -1, 1])  # [H] -> [1, 1, H, 1]
        n = emit(aten.div.Tensor, emit(aten.expm1.default, emit(aten.mul.Tensor, n, ld)), emit(aten.expm1.default, ld))
    return emit(aten.pow.Tensor_Scalar, n, -cand.row_power)


def _device(x):
    return (x.meta["val"] if isinstance(x, Node) else x).device


def shape_of(x, emit) -> tuple[int, ...]:
    return tuple(x.meta["val"].shape) if isinstance(emit, GraphEmitter) else tuple(x.shape)
