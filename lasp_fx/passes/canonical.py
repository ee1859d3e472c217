"""Canonicalisation: in-place ATen ops -> their functional forms (for graphs not yet functional).

A dynamo graph re-traced with make_fx(pre_dispatch=True) still has `mul_`, `tril_`
(docs/design.md §6): an in-place op on a fresh intermediate that nothing else aliases becomes its
out-of-place overload; mutations of inputs, views and aliased tensors are left alone.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node


def _functional_overload(op: torch._ops.OpOverload):
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(torch.ops.aten, name[:-1], None)
    return None if packet is None else getattr(packet, op._overloadname, None)


def _is_view(node: Node) -> bool:
    t = node.target
    if node.op != "call_function" or not isinstance(t, torch._ops.OpOverload):
        return False
    return any(r.alias_info is not None and not r.alias_info.is_write for r in t._schema.returns)


def _fresh(node: Node) -> bool:
    """Produced by a non-view op and not viewed by anyone (so no alias can see the mutation)."""
    if node.op != "call_function" or _is_view(node):
        return False
    return not any(_is_view(u) for u in node.users)


def functionalize_inplace(gm: GraphModule) -> GraphModule:
    """Replace safe in-place ops by functional ones, in place; returns `gm`."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        t = node.target
        if node.op != "call_function" or not isinstance(t, torch._ops.OpOverload) or not t._schema.is_mutable:
            continue
        functional = _functional_overload(t)
        target = node.args[0] if node.args else None
        if functional is None or not isinstance(target, Node) or not _fresh(target):
            continue
        later = [u for u in target.users if u is not node and order[u] > order[node]]
        node.target = functional
        for u in later:
            u.replace_input_with(target, node)
    gm.graph.lint()
    gm.recompile()
    return gm


def drop_noop_slices(gm: GraphModule) -> GraphModule:
    """Remove slices that keep a whole dimension (`x[..., :, None]` traces as slice(x, d, 0, 2**63-1)).

    With a symbolic sequence length these stay in the graph, between a cumsum and the mask it
    feeds, and would hide the per-token decay from the detector.
    """
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.slice.Tensor:
            continue
        x, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
        start = node.args[2] if len(node.args) > 2 else 0
        end = node.args[3] if len(node.args) > 3 else None
        step = node.args[4] if len(node.args) > 4 else 1
        if not isinstance(x, Node) or start not in (0, None) or step != 1:
            continue
        if end is None or (isinstance(end, int) and end >= 2**62) or _same_size(x, node, dim):
            node.replace_all_uses_with(x)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _same_size(x: Node, node: Node, dim: int) -> bool:
    a, b = x.meta.get("val"), node.meta.get("val")
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return False
    # compare size expressions, not SymInts: `==` on SymInts would add a guard
    def exprs(t):
        return tuple(s.node.expr if isinstance(s, torch.SymInt) else s for s in t.shape)

    return exprs(a) == exprs(b)


def drop_dead_mutations(gm: GraphModule) -> GraphModule:
    """Remove in-place ops on graph-private tensors that nothing reads afterwards.

    A cache built and discarded inside forward (HF's `use_cache=True` on a training call: the
    cache's length counter is `add_`-ed and never returned) leaves mutations that no output
    depends on; DCE keeps them (mutations count as side effects) and the sharding pass would
    refuse them. Only tensors made inside the graph (or its private constants) qualify: a
    mutation of an input, parameter or buffer is a real side effect and stays.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        t = node.target
        if node.op != "call_function" or not isinstance(t, torch._ops.OpOverload) or not t._schema.is_mutable:
            continue
        target = node.args[0] if node.args else None
        if node.users or not isinstance(target, Node):
            continue
        aliases = _aliases(target)
        if aliases is None:
            continue
        later = [u for a in aliases for u in a.users if u is not node and u not in aliases and order[u] > order[node]]
        if not later:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def _aliases(node: Node) -> set[Node] | None:
    """Every view of the tensor `node` aliases, when its storage was made inside the graph (a
    fresh result or a private constant); None otherwise (an input, parameter or buffer)."""
    root = node
    while root.op == "call_function" and _is_view(root) and root.args and isinstance(root.args[0], Node):
        root = root.args[0]
    fresh = root.op == "call_function" and not _is_view(root)
    if not (fresh or (root.op == "get_attr" and str(root.target).startswith("_tensor_constant"))):
        return None
    out, todo = set(), [root]
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(u for u in n.users if _is_view(u) and u.args and u.args[0] is n)
    return out
