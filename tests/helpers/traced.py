"""A function traced as parallelize()'s backend sees it, for the tests of single passes."""

import torch


def traced(fn, *inputs):
    """(graph, sequence symbols, its inputs) as parallelize's backend sees them: dim 1 of every input dynamic."""
    from lasp_fx.capture import capture_dynamo_graph
    from lasp_fx.passes.shard.seq_dims import sequence_symbols

    box = {}

    def backend(gm, example_inputs):
        graph = capture_dynamo_graph(gm, example_inputs)
        fakes = [ph.meta.get("val") for ph in graph.graph.find_nodes(op="placeholder")]
        box["graph"], box["inputs"] = graph, example_inputs
        box["symbols"] = sequence_symbols(fakes, lambda i, v: 1 if isinstance(v, torch.Tensor) and v.dim() > 1
                                          else None)
        return gm.forward

    for t in inputs:
        torch._dynamo.mark_dynamic(t, 1)
    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True, dynamic=False)(*inputs)
    return box["graph"], box["symbols"], box["inputs"]
