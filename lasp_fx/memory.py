"""Memory levers for long sequences that stay exact under parallelize(): block checkpointing, host offload.

`checkpoint_blocks(model)` (what `ParallelConfig(checkpoint="blocks")` applies) makes every child
of the model's largest nn.ModuleList run under non-reentrant `torch.utils.checkpoint`: dynamo
turns each call into a checkpoint region, the capture keeps its nodes tagged (capture.py
`inline_checkpoints`), and AOTAutograd's partitioner then saves only each block's inputs and
recomputes the rest in backward. `offload` (ParallelConfig(offload=True)) then moves those saved
values to host memory between forward and backward. The function computed, and every gradient,
stay the same.
"""

from __future__ import annotations

import functools

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
