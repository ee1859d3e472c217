"""Rewrite: each verified candidate becomes one call of torch.ops.lasp_fx.linear_attention.

The op call stays a single node with `node.meta["lasp_fx_match"]` (a LinearAttentionMatch),
so later passes (sequence sharding) find it by target. The graph keeps the user's parameters
(get_attr / placeholders are untouched); the nodes the replacement made dead are erased.
"""

from __future__ import annotations

from torch.fx import GraphModule, Node

from lasp_fx.passes.detect.context import to_match
from lasp_fx.passes.emit import LASP_OP, GraphEmitter, build
from lasp_fx.passes.graph import ancestors, aten, topo_order
from lasp_fx.passes.match import Candidate

MATCH_KEY = "lasp_fx_match"


def rewrite(gm: GraphModule, candidates: list[Candidate]) -> GraphModule:
    """Replace every candidate's region by the op, in place; returns `gm`."""
    for cand in candidates:
        replace_candidate(gm, cand)
    gm.graph.lint()
    gm.recompile()
    return gm


def replace_candidate(gm: GraphModule, cand: Candidate) -> Node:
    """Insert the replacement of one candidate, reroute its users, erase dead nodes; returns
    the op node."""
    em = GraphEmitter(gm, cand.out)
    env = {n: n for n in (cand.q, cand.k, cand.v, cand.decay.node) if n is not None}
    new_out = build(cand, em, env)
    op_node = next(n for n in em.nodes if n.target is LASP_OP)
    op_node.meta[MATCH_KEY] = to_match(cand)
    old = ancestors([cand.out])
    cand.out.replace_all_uses_with(new_out)
    _erase_dead(gm, old)
    return op_node


def _erase_dead(gm: GraphModule, nodes: set[Node]) -> None:
    order = topo_order(gm.graph)
    for n in sorted(nodes, key=order.__getitem__, reverse=True):
        checks = [u for u in n.users if u.target is aten._assert_tensor_metadata.default]
        if len(checks) == len(n.users):  # `.to(dtype)` leaves a metadata check that keeps n alive
            for u in checks:
                gm.graph.erase_node(u)
        if not n.users and n.op in ("call_function", "get_attr") and not n.is_impure():
            gm.graph.erase_node(n)
