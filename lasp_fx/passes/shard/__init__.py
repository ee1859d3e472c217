"""shard_pass(gm, spec) -> gm: make a graph traced on one rank's slice compute that slice of the whole model.

Every shape is already local (the slice length is symbolic); what stays wrong are the ops that
mix positions, each made sequence-parallel by a rule (rules.py, halo.py, attention.py, tiles.py,
causal_masks.py, padding_masks.py, documents.py, writes.py) or refused with its source line: the
table is docs/design.md §5.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from lasp_fx.config import ShardSpec
from lasp_fx.distributed import seq_ops
from lasp_fx.passes.shard import attention as shard_attention, documents as shard_documents, halo as shard_halo
from lasp_fx.passes.shard import padding_masks, permutations as shard_permutations, rules as shard_rules
from lasp_fx.passes.shard import tiles as shard_tiles, writes as shard_writes
from lasp_fx.passes.shard.causal_masks import causal_masks_pass
from lasp_fx.passes.shard.rules import ShardError
from lasp_fx.passes.shard.seq_dims import seq_dims_of, size_has, touches_sequence


class ShardContext:
    """What a rule needs: the graph, the spec, the sequence symbols and the local length as a node."""

    def __init__(self, gm: fx.GraphModule, spec: ShardSpec, symbols: frozenset):
        self.gm, self.graph, self.spec, self.symbols = gm, gm.graph, spec, symbols
        self._length = None

    def seq_dims(self, node) -> tuple[int, ...]:
        return seq_dims_of(node.meta.get("val") if isinstance(node, fx.Node) else None, self.symbols)

    def seq_dims_of(self, value) -> tuple[int, ...]:
        return seq_dims_of(value, self.symbols)

    def is_seq_size(self, size) -> bool:
        return size_has(size, self.symbols)

    def length(self) -> fx.Node:
        """A node holding the local sequence length s (read off the first sequence input)."""
        if self._length is None:
            for ph in self.graph.find_nodes(op="placeholder"):
                val = ph.meta.get("val")
                dims = seq_dims_of(val, self.symbols)
                exact = [d for d in dims if val.shape[d].node.expr in self.symbols]
                if exact:
                    with self.graph.inserting_after(_last_placeholder(self.graph)):
                        self._length = self.graph.call_function(torch.ops.aten.sym_size.int, (ph, exact[0]))
                    self._length.meta["val"] = val.shape[exact[0]]
                    break
            else:
                raise RuntimeError("no graph input carries the sequence length: nothing to shard")
        return self._length

    def offset(self, before: fx.Node) -> fx.Node:
        """rank * s: the global position of this rank's first token."""
        with self.graph.inserting_before(before):
            return self.graph.call_function(operator.mul, (self.length(), self.spec.rank))

    def call(self, before: fx.Node, fn, *args, **kwargs) -> fx.Node:
        with self.graph.inserting_before(before):
            new = self.graph.call_function(fn, args, kwargs)
        _copy_meta(before, new, _CHECKPOINT_TAGS)
        return new

    def replace(self, node: fx.Node, new: fx.Node) -> fx.Node:
        """Send every use of `node` to `new`, which takes over its meta (shape, source line)."""
        _copy_meta(node, new)
        node.replace_all_uses_with(new)
        return new

    def wrap(self, node: fx.Node, fn, *args) -> fx.Node:
        """Insert `fn(node, *args)` right after `node` and send node's other uses to it."""
        with self.graph.inserting_after(node):
            new = self.graph.call_function(fn, (node, *args))
        _copy_meta(node, new)
        node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)
        return new


# Activation checkpointing (capture.inline_regions): nodes a rule adds inside a checkpointed
# region are recomputed in backward with it, instead of pinning their inputs in memory.
_CHECKPOINT_TAGS = ("recompute", "ac_graph_id")


_META = ("val", "stack_trace", "nn_module_stack", *_CHECKPOINT_TAGS)


def _copy_meta(src: fx.Node, dst: fx.Node, keys=_META) -> None:
    for key in keys:
        if key in src.meta:
            dst.meta.setdefault(key, src.meta[key])


def _last_placeholder(graph: fx.Graph) -> fx.Node:
    return list(graph.find_nodes(op="placeholder"))[-1]


def sync_parameter_grads(gm: fx.GraphModule, spec: ShardSpec, is_parameter) -> fx.GraphModule:
    """Route every parameter input through `sum_grad_over_ranks` (see its docstring)."""
    graph = gm.graph
    for i, ph in enumerate(graph.find_nodes(op="placeholder")):
        if not is_parameter(i, ph) or not ph.users:
            continue
        with graph.inserting_after(_last_placeholder(graph)):
            synced = graph.call_function(seq_ops.sum_grad_over_ranks, (ph, spec.group_name))
        synced.meta["val"] = ph.meta.get("val")
        ph.replace_all_uses_with(synced, delete_user_cb=lambda user: user is not synced)
    return gm


def _partial_replicated_outputs(ctx: ShardContext) -> None:
    """Outputs without a sequence dim are replicated: their gradients enter as 1/P shares."""
    out = ctx.graph.output_node()

    def wrap(arg):
        val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
        if not isinstance(val, torch.Tensor) or not val.is_floating_point() or ctx.seq_dims(arg):
            return arg
        return ctx.call(out, seq_ops.partial_output, arg, ctx.spec.world_size)

    out.args = fx.node.map_arg(out.args, wrap)


def shard_pass(gm: fx.GraphModule, spec: ShardSpec, symbols: frozenset) -> fx.GraphModule:
    """Rewrite `gm` (traced on one slice, sequence length symbolic in `symbols`) for the group.

    Raises:
        ShardError: an op mixes positions and no rule makes it sequence-parallel; the message
            names the op, the user's source line and what to do.
    """
    gm.graph.eliminate_dead_code()  # dead position-mixing code (a mask nobody reads) needs no rule
    causal_masks_pass(gm, symbols)  # library-built causal masks -> is_causal=True
    shard_documents.document_masks_pass(gm, symbols)  # causal & same-document masks -> one op with the documents
    padding_masks.padding_masks_pass(gm, symbols)  # causal & padding masks -> one op with the keys' flags
    ctx = ShardContext(gm, spec, symbols)
    rules = {**shard_rules.RULES, **shard_attention.RULES, **shard_halo.RULES, **padding_masks.RULES,
             **shard_documents.RULES, **shard_writes.RULES}
    rules.update(shard_tiles.rules(rules))  # splits of the sequence into position-wise tiles
    permuted = shard_permutations.claim(ctx, rules)  # tokens sorted within the rank and put back (MoE)
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        shard_rules.check_no_length_as_value(ctx, node)
        if not touches_sequence(node, symbols) or node in permuted:
            continue
        rule = shard_rules.rule_for(node.target, rules)
        if rule is None:
            raise ShardError(
                node,
                "this op reads tensors that carry the sequence and lasp_fx has no rule for it",
                "If it only works position by position, report it to lasp_fx; otherwise compute it "
                "outside the parallelized model",
            )
        try:
            rule(ctx, node)
        except ShardError:
            raise
        except Exception as e:  # noqa: BLE001 - an internal failure is still a verdict on this line
            raise ShardError(node, f"lasp_fx's rule for this op failed ({type(e).__name__}: {e})",
                             "Report it to lasp_fx with this line; meanwhile compute it outside the parallelized "
                             "model") from e
    _partial_replicated_outputs(ctx)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
