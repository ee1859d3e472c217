"""Einsums of three or more operands -> a chain of two-operand products, left to right.

Research code folds a mask or a normaliser into one einsum (`'bhqd,bhkd,hqk->bhqk'`,
`'...nde,...nd,...n->...ne'`); the pattern families reason about pairs (q k^T, then a mask, then
the product with v). Each step keeps the labels later operands or the output still need; a step
that contracts nothing (a mask or a per-row factor) becomes a broadcast `mul`, which the mask
chain and the normaliser checks read like any other.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from lasp_fx.passes.graph import aten, val
from lasp_fx.passes.detect.labels import _einsum


def split_einsums(gm: GraphModule) -> GraphModule:
    """Replace every einsum of 3+ operands by two-operand steps, in place; returns `gm`."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is aten.einsum.default and len(node.args[1]) >= 3:
            c = _einsum(node)
            if c is None or any(len(set(t)) != len(t) for t in c.inputs):
                continue  # repeated labels (traces, diagonals): left whole
            emit = _Emitter(gm, node)
            acc, acc_lab = c.operands[0], c.inputs[0]
            for i in range(1, len(c.operands)):
                later = "".join(c.inputs[i + 1:]) + c.output
                lab = c.inputs[i]
                keep = c.output if i == len(c.operands) - 1 else "".join(
                    dict.fromkeys(ch for ch in acc_lab + lab if ch in later))
                acc = _pair(emit, acc, acc_lab, c.operands[i], lab, keep)
                acc_lab = keep
            node.replace_all_uses_with(acc)
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


def _pair(emit, a: Node, la: str, b: Node, lb: str, out: str) -> Node:
    if set(la) | set(lb) == set(out):  # nothing contracted: a broadcast product
        return emit(aten.mul.Tensor, _align(emit, a, la, out), _align(emit, b, lb, out))
    return emit(aten.einsum.default, f"{la},{lb}->{out}", [a, b])


def _align(emit, x: Node, lab: str, out: str) -> Node:
    """x with its dims in `out`'s order and a size-1 dim for every label it lacks."""
    order = [lab.index(ch) for ch in out if ch in lab]
    if order != list(range(len(lab))):
        x = emit(aten.permute.default, x, order)
    have = [ch for ch in out if ch in lab]
    first = next(i for i, ch in enumerate(out) if ch in lab) if have else len(out)
    for i, ch in enumerate(out):  # leading missing dims broadcast by themselves
        if ch not in lab and i > first:
            x = emit(aten.unsqueeze.default, x, i - first)
    return x


class _Emitter:
    """Inserts nodes before `where` with fake values and its source information."""

    def __init__(self, gm: GraphModule, where: Node):
        self.graph, self.where = gm.graph, where
        self.fake_mode = torch._guards.detect_fake_mode([val(a) for a in where.all_input_nodes])

    def __call__(self, target, *args):
        with self.graph.inserting_before(self.where):
            node = self.graph.call_function(target, args)
        fake = torch.fx.node.map_arg(args, lambda n: n.meta["val"])
        with self.fake_mode or torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
            node.meta["val"] = target(*fake)
        for key in ("stack_trace", "nn_module_stack", "source_fn_stack"):
            if key in self.where.meta:
                node.meta[key] = self.where.meta[key]
        return node
