"""Softmax attention the detector leaves alone (scaled_dot_product_attention calls), for the report."""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from lasp_fx.passes.graph import module_path, source_of
from lasp_fx.passes.match import NearMiss

FAMILY = "softmax (SDPA)"


def softmax_layers(gm: GraphModule) -> list[NearMiss]:
    """One entry per scaled_dot_product_attention call of the graph, in graph order, with how it is masked."""
    found = []
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.aten.scaled_dot_product_attention.default):
        mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
        causal = node.args[5] if len(node.args) > 5 else node.kwargs.get("is_causal", False)
        how = "with a mask" if mask is not None else ("causal" if causal else "not causal")
        where, code = source_of(node)
        found.append(NearMiss(FAMILY, where, code, module_path(node),
                              f"softmax attention ({how}): not linear, left as it is", node))
    return found
