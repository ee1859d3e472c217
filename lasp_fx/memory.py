"""Memory levers for long sequences that stay exact under parallelize(): block checkpointing, host offload.

`checkpoint_blocks(model)` (what `ParallelConfig(checkpoint="blocks")` applies) makes every child
of the model's largest nn.ModuleList run under non-reentrant `torch.utils.checkpoint`: dynamo
turns each call into a checkpoint region, the capture keeps its nodes tagged (capture.py
`inline_regions`), and AOTAutograd's partitioner then saves only each block's inputs and
recomputes the rest in backward. `inductor_options` keeps Inductor from undoing that order in
the compiled backward. `offload` (ParallelConfig(offload=True)) then moves those saved values to
host memory between forward and backward. The function computed, and every gradient, stay the same.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

_MARK = "_lasp_fx_checkpointed"


def checkpoint_blocks(model: nn.Module) -> list[nn.Module]:
    """Run each child of `model`'s largest nn.ModuleList under non-reentrant checkpointing, in place.

    Only the blocks' `forward` attributes change (parameters, state_dict keys and hooks stay).
    Applying it twice wraps nothing twice.

    Returns:
        The blocks that are checkpointed.

    Raises:
        ValueError: the model has no nn.ModuleList to take the blocks from.
    """
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(
            f'checkpoint="blocks": {type(model).__name__} has no nn.ModuleList of blocks to checkpoint; '
            "wrap the repeated blocks yourself: x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)"
        )
    blocks = max(lists, key=len)  # the first of the longest: the transformer's layers
    for block in blocks:
        if not getattr(block, _MARK, False):
            block.forward = _checkpointed(block.forward)
            setattr(block, _MARK, True)
    return list(blocks)


def _checkpointed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


# ------------------------------------------------------------------------------ the compiled backward
# In one graph of the whole model, Inductor fuses pointwise nodes that the partitioner placed far
# apart in the backward. The vocabulary-chunked loss's gradient for the hidden states is a sum of
# one [T, dim] term per slice, which eager autograd adds as each arrives; fused into one kernel
# (and lowered as one expression), every term stays alive until the last slice's is made: one
# hidden-sized tensor per slice at the peak, where the checkpointed blocks keep one per block.
# `sum_in_order` makes such sums add one term at a time through an op Inductor does not fuse; a
# cap on a fused kernel's distinct buffers keeps the other fusions near the partitioner's order,
# and with no reuse pool a dead buffer is freed at once rather than held for a later one of its
# size. The same ops on the same values: a partial sum is stored in its dtype, as eager stores it.
_LEAN_BACKWARD = {"max_fusion_unique_io_buffers": 8, "allow_buffer_reuse": False}


def inductor_options(gm, offload: bool = False) -> dict:
    """Inductor config patches for `gm`: with checkpointed regions (someone asked for memory), those of
    `_LEAN_BACKWARD` this torch has and `sum_in_order` on the joint graph; `mark_offload` with offload."""
    import torch._inductor.config as config

    checkpointed = any(node.meta.get("recompute") is not None for node in gm.graph.nodes)
    options = {key: value for key, value in _LEAN_BACKWARD.items() if hasattr(config, key)} if checkpointed else {}
    passes = ((sum_in_order,) if checkpointed else ()) + ((mark_offload,) if offload else ())
    if passes:
        options["joint_custom_pre_pass"] = _joint_passes(passes)
    return options


def sum_in_order(graph) -> int:
    """On AOTAutograd's joint graph: each backward sum of three or more terms that are whole buffers
    (matmul, convolution or custom op outputs) and do not depend on its partial sums (the gradients
    of one value used many times) adds its terms one at a time through `lasp_fx::add_in_order`, in
    the order autograd added them. Returns how many adds."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true, sym_eq

    add = torch.ops.aten.add.Tensor
    backward, index = set(), {}
    for i, node in enumerate(graph.nodes):
        index[node] = i
        if (node.op == "placeholder" and node.name.startswith("tangents")) or any(
            x in backward for x in node.all_input_nodes
        ):
            backward.add(node)

    def plain(node):  # a + b of two backward tensors alike, no alpha
        if not (isinstance(node, torch.fx.Node) and node.target is add and node in backward) or node.kwargs:
            return False
        vals = [x.meta.get("val") if isinstance(x, torch.fx.Node) else None for x in (*node.args, node)]
        return all(isinstance(v, torch.Tensor) and v.dtype == vals[0].dtype for v in vals) and all(
            statically_known_true(sym_eq(v.shape, vals[0].shape)) for v in vals  # adds no guard on lengths
        )

    previous = {}  # a link of a chain -> the partial sum it adds to (used by it alone)
    for node in graph.nodes:
        if plain(node):
            partial = next((x for x in node.args if plain(x) and len(x.users) == 1), None)
            if partial is not None:
                previous[node] = partial
    heads = {p for p in previous.values() if p not in previous}
    chains = {head: [head] for head in heads}
    for node in sorted(previous, key=index.get):  # in order: each link joins its partial sum's chain
        chains[_head(node, previous)].append(node)
    count = 0
    for head, chain in chains.items():
        terms = [x for link in chain[1:] for x in link.args if x is not previous[link]]
        if all(map(_materialized, terms)) and not _depends_on_any(terms, head, index):
            for link in chain:
                link.target = torch.ops.lasp_fx.add_in_order.default
            count += len(chain)
    return count


# Views pass their operand's buffer through; these ops' outputs are buffers of their own whatever
# Inductor fuses (a pointwise term is computed inside the kernel that adds it, and stays cheap).
_VIEWS = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
          "slice", "select", "alias", "getitem"}
_MATERIALIZED = {"mm", "bmm", "addmm", "baddbmm", "convolution", "convolution_backward"}


def _materialized(node) -> bool:
    """Whether `node` reads a buffer that an op made whole: a matmul, a convolution or a custom op."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and _name(node.target) in _VIEWS:
        node = node.args[0]
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function"):
        return False
    namespace = getattr(node.target, "namespace", None)
    return _name(node.target) in _MATERIALIZED or namespace not in (None, "aten", "prims")


def _name(target) -> str:
    packet = getattr(target, "_overloadpacket", None)
    return getattr(packet, "__name__", getattr(target, "__name__", ""))


def _head(node, previous):
    while node in previous:
        node = previous[node]
    return node


def _depends_on_any(terms, head, index) -> bool:
    """Whether any of `terms` is computed from `head` (a term made before it cannot be)."""
    later = {t for t in terms if index[t] > index[head]}
    last = max((index[t] for t in later), default=-1)
    seen, todo = set(), [head]
    while todo and later:
        node = todo.pop()
        for user in node.users:
            if user in later:
                return True
            if user not in seen and index[user] <= last:
                seen.add(user)
                todo.append(user)
    return False


def _joint_passes(passes):
    """Inductor's joint_custom_pre_pass running `passes` in order; its uuid keys Inductor's FX graph
    cache (a plain function there turns the cache off)."""
    return _joint_passes_class()(passes)


@functools.cache
def _joint_passes_class():
    from torch._inductor.custom_graph_pass import CustomGraphPass  # Inductor only when it compiles

    class JointPasses(CustomGraphPass):
        def __init__(self, passes):
            self.passes = passes

        def __call__(self, graph) -> None:
            for run in self.passes:
                run(graph)

        def uuid(self) -> str:  # the passes and this file's text: an edited pass misses the cache
            return ",".join(run.__name__ for run in self.passes) + ":" + _source_hash()

    return JointPasses


@functools.cache
def _source_hash() -> str:
    import hashlib

    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _add_in_order(a, b):
    out = torch.empty_like(a)  # the fake's layout, whatever b's is
    return torch.add(a, b, out=out)


# ------------------------------------------------------------------------------ offload
_OFFLOAD_MIN_NUMEL = 1 << 16  # smaller saved tensors (norm statistics, scalars) stay on the device


def offload_available() -> bool:
    """Whether this torch's AOTAutograd can move saved activations to host memory."""
    import torch

    try:
        import torch._functorch._activation_offloading.activation_offloading  # noqa: F401
    except ImportError:
        return False
    return hasattr(torch._functorch.config, "enable_activation_offloading")


def offloading():
    """The AOTAutograd config under which the partitioner offloads the nodes `mark_offload` marked."""
    import torch

    if not offload_available():
        raise RuntimeError(
            f"offload=True needs AOTAutograd's activation offloading, which torch {torch.__version__} "
            "does not have: upgrade torch or leave offload off"
        )
    return torch._functorch.config.patch(enable_activation_offloading=True)


def mark_offload(graph) -> None:
    """On AOTAutograd's joint graph: every large forward value may go to host memory if saved.

    The partitioner keeps only those it saves for backward (with checkpointing: each block's
    input), copies each to the CPU after its last forward use and back before its first
    backward use. The values are copied, never changed: the function computed stays the same.
    """
    import torch

    for node in graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or not isinstance(val, torch.Tensor):
            continue
        numel = val.numel()
        if not isinstance(numel, int) or numel >= _OFFLOAD_MIN_NUMEL:  # symbolic: grows with the length
            node.meta["should_offload"] = True


def offloading_partition(partition):
    """`partition` (an AOTAutograd partition_fn) with large saved activations offloaded."""

    def run(joint, joint_inputs, **kwargs):
        mark_offload(joint.graph)
        with offloading():
            return partition(joint, joint_inputs, **kwargs)

    return run


# An add that Inductor runs as it is (an opaque op, never fused): see sum_in_order.
torch.library.custom_op("lasp_fx::add_in_order", _add_in_order, mutates_args=(),
                        schema="(Tensor a, Tensor b) -> Tensor").register_fake(lambda a, b: torch.empty_like(a))
