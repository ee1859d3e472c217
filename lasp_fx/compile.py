"""The torch.compile backend behind parallelize() and backend="lasp": capture, rewrite, shard, compile.

    capture   dynamo's graph -> functional pre-dispatch ATen with shapes and source lines
    rewrite   linear attention -> lasp_fx::linear_attention (passes/)
    shard     (with a sequence-parallel spec) position-mixing ops -> sequence-parallel versions,
              parameter gradients summed over the group (passes/shard/__init__.py)
    compile   inductor, aot_eager (AOTAutograd with Inductor's decompositions) or eager
"""

from __future__ import annotations

import contextlib

import torch
from torch import fx, nn

from lasp_fx import memory
from lasp_fx.capture import capture_dynamo_graph
from lasp_fx.config import Compiler, ShardSpec
from lasp_fx.passes import rewrite_linear_attention
from lasp_fx.passes.shard.fixed_length import why_fixed
from lasp_fx.passes.graph import probe_sizes
from lasp_fx.passes.detect.known_kernels import register_known_kernels
from lasp_fx.passes.shard.seq_dims import sequence_symbols
from lasp_fx.passes.shard import ShardError, shard_pass, sync_parameter_grads


def _compile(gm: fx.GraphModule, example_inputs, compiler: Compiler, offload: bool = False):
    if compiler == "auto":
        on_cuda = any(isinstance(t, torch.Tensor) and t.is_cuda for t in example_inputs)
        compiler = "inductor" if on_cuda else "aot_eager"
    if compiler == "eager":
        return gm.forward
    if compiler == "inductor":
        from torch._inductor.compile_fx import compile_fx

        with memory.offloading() if offload else contextlib.nullcontext():
            return compile_fx(gm, example_inputs, config_patches=memory.inductor_options(gm, offload) or None)
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.compile_fx import select_decomp_table

    def nop(g, _):
        return make_boxed_func(g.forward)

    # Inductor's decompositions: plain aot_eager fails in elu's backward (docs/design.md §7).
    # The min-cut partitioner honours activation checkpointing (nodes tagged "recompute").
    partition = min_cut_rematerialization_partition
    if offload:
        partition = memory.offloading_partition(partition)
    return aot_autograd(fw_compiler=nop, bw_compiler=nop, decompositions=select_decomp_table(),
                        partition_fn=partition)(gm, example_inputs)


PROBE_LENGTH = 40  # tokens the detector replays: mid-chunk, and tiny next to real lengths


def _short_inputs(example_inputs, fakes, seq_dim_of):
    """The example inputs with every sequence input whose length is symbolic in the graph cut to
    PROBE_LENGTH tokens (or fewer); a graph with a static length is replayed at that length."""
    def cut(i, t):
        d = seq_dim_of(i, t)
        return d if d is not None and isinstance(fakes[i].shape[d], torch.SymInt) else None

    lengths = [t.shape[cut(i, t)] for i, t in enumerate(example_inputs) if cut(i, t) is not None]
    length = min([PROBE_LENGTH, *lengths])
    short = [t.narrow(cut(i, t), 0, length) if cut(i, t) is not None else t for i, t in enumerate(example_inputs)]
    return short, length


def _not_rewritten(graph: fx.GraphModule) -> str:
    report = graph.meta.get("lasp_fx_report")
    lines = report.near_miss_lines() if report is not None else []
    return "".join(f"\n  {line}" for line in lines)


def make_backend(spec: ShardSpec | None, *, seq_dim: int = 1, compiler: Compiler = "auto", rewrite=None,
                 offload: bool = False):
    """A dynamo backend: rewrite linear attention, shard for `spec` (None: one device), compile.

    Args:
        spec: where this rank sits in the sequence-parallel group, or None for no sharding.
        seq_dim: sequence dim of the (non-parameter) tensor inputs, marked dynamic by the caller.
        compiler: "inductor", "aot_eager", "eager" or "auto".
        rewrite: `(gm, example_inputs) -> gm` pass replacing linear attention by the lasp_fx op
            (default: lasp_fx.passes.rewrite_linear_attention).
        offload: keep the large activations saved for backward in host memory (lasp_fx.memory);
            needs an AOTAutograd compiler ("inductor" or "aot_eager").
    """
    if offload and compiler == "eager":
        raise ValueError('offload=True needs compiler "inductor", "aot_eager" or "auto", not "eager"')

    register_known_kernels()  # before dynamo traces: fla / lasp kernel calls become the op

    def backend(gm: fx.GraphModule, example_inputs):
        def seq_dim_of(i, v):
            seq_input = isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.dim() > seq_dim
            return seq_dim if seq_input else None

        graph = capture_dynamo_graph(gm, example_inputs)
        fakes = [ph.meta.get("val") for ph in graph.graph.find_nodes(op="placeholder")]
        symbols = sequence_symbols(fakes, lambda i, v: seq_dim_of(i, example_inputs[i]))
        # The detector proves each match numerically by replaying the graph in float64: on a
        # short prefix of the inputs, so that its cost does not grow with the real length.
        probe_inputs, length = _short_inputs(example_inputs, fakes, seq_dim_of)
        with probe_sizes({sym: length for sym in symbols}):
            graph = (rewrite or rewrite_linear_attention)(graph, probe_inputs)
        if spec is not None and spec.world_size > 1:
            if not symbols:
                raise ValueError(
                    f"no input carries a dynamic sequence dimension {seq_dim} in the traced graph: "
                    f"{why_fixed(example_inputs, seq_dim)} (or pass tensors with the sequence in seq_dim)"
                    + _not_rewritten(graph)
                )
            graph = sync_parameter_grads(graph, spec, lambda i, ph: isinstance(example_inputs[i], nn.Parameter))
            try:
                graph = shard_pass(graph, spec, symbols)
            except ShardError as e:  # say also which attention the detector saw and did not rewrite
                e.args = (str(e) + _not_rewritten(graph),)
                raise
        return _compile(graph, example_inputs, compiler, offload)

    return backend
