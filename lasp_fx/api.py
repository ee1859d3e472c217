"""parallelize(): train a model on P times longer sequences over P ranks, computing the same function.

The model's forward is compiled with lasp_fx's backend on each rank's slice, the slice length
symbolic so that shapes tell where the sequence is (docs/architecture.md has the stages); the
module itself is untouched but for its `forward`: parameters, state_dict keys, hooks and the
module tree stay what they were.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import traceback

import torch
import torch.distributed as dist
from torch import nn

from lasp_fx.compile import make_backend
from lasp_fx.config import ParallelConfig
from lasp_fx.distributed.mesh import SequenceMesh


def parallelize(model: nn.Module, *, mesh=None, config: ParallelConfig | None = None, **options) -> nn.Module:
    """Make `model` sequence-parallel over the ranks of `mesh`, in place.

    Args:
        model: any nn.Module whose forward takes tensors with the sequence in `seq_dim`.
        mesh: a DeviceMesh (1-D, or with a dimension named "sp"; on a 2-D (dp, sp) mesh only
            "sp" splits the sequence and DDP / FSDP handle "dp"), a ProcessGroup, or None for all
            ranks of the default group.
        config: a ParallelConfig; keyword `options` override its fields (e.g. method="ring").

    Returns:
        The same module object, whose forward now runs sequence-parallel. The rewrite happens at
        the first call (trace, rewrite, compile), and errors about unsupported position-mixing
        ops are raised there, before any optimizer step.

    Raises:
        RuntimeError: torch.distributed is not initialised.
    """
    config = dataclasses.replace(config or ParallelConfig(), **options)  # checks the options
    _check_initialized()
    smesh = SequenceMesh.resolve(mesh)
    if config.checkpoint == "blocks":
        from lasp_fx.memory import checkpoint_blocks

        checkpoint_blocks(model)
    original = model.forward
    backend = make_backend(smesh.spec(config.method, config.timeout), seq_dim=config.seq_dim,
                           compiler=config.compiler, offload=config.offload)
    compiled = torch.compile(original, backend=backend, fullgraph=True, dynamic=False)
    state = {"checked": False}

    @functools.wraps(original)
    def forward(*args, **kwargs):
        args, kwargs, length = smesh.shard_inputs(args, kwargs, config.seq_dim, config.inputs)
        # every call on a CPU group; on NCCL the first, then the headers of the states (distributed/header.py)
        smesh.check_same_batch(args, kwargs, first=not state["checked"], timeout=config.timeout)
        state["checked"] = True
        out = _surface_errors(compiled, args, kwargs)
        return smesh.wrap_outputs(out, config.seq_dim, length, config.outputs)

    model.forward = forward
    return model


_RECOMPILE_LIMIT = 64


def _surface_errors(compiled, args, kwargs):
    """Run the compiled forward; lasp_fx's own errors come out as themselves, not wrapped by dynamo,
    and dynamo's failures to trace the forward as one graph (graph breaks, control flow on tensor
    values) as a CaptureError naming the model's line and what to do."""
    from torch._dynamo.exc import (
        BackendCompilerFailed, InternalTorchDynamoError, TorchRuntimeError, Unsupported, UserError,
    )  # fmt: skip

    from lasp_fx.capture import explain, in_nested_region

    try:
        # Under DDP, dynamo would cut the graph into buckets for overlap (DDPOptimizer); the
        # sharding pass needs the whole graph, and DDP's hooks still reduce over "dp" after it.
        # Models of one class share the forward's code object, and dynamo's cache with it: each
        # parallelized instance (and each call signature) is a graph of its own, so allow more.
        with torch._dynamo.config.patch(optimize_ddp=False, recompile_limit=_RECOMPILE_LIMIT):
            return compiled(*args, **kwargs)
    except BackendCompilerFailed as e:
        inner = getattr(e, "inner_exception", None)
        if _is_verdict(inner):
            raise inner.with_traceback(None) from None
        raise
    except (Unsupported, UserError, TorchRuntimeError) as e:
        raise explain(e) from e
    except InternalTorchDynamoError as e:
        if in_nested_region(e):  # a dynamo bug with a known way round: say which
            raise explain(e) from e
        raise


def _is_verdict(e) -> bool:
    """Whether lasp_fx raised `e` on purpose: an error class of its own, or a plain ValueError /
    RuntimeError raised in its code. An internal crash (KeyError, a TypeError from a library call)
    stays wrapped by dynamo, and reads as one."""
    if not isinstance(e, (ValueError, TypeError, RuntimeError)):
        return False
    if type(e).__module__.startswith("lasp_fx"):
        return True
    frames = traceback.extract_tb(e.__traceback__)
    # real paths on both sides: a module found through a relative or linked sys.path entry has
    # another spelling of the same file
    package = os.path.dirname(os.path.realpath(__file__)) + os.sep
    return (type(e) in (ValueError, RuntimeError) and bool(frames)
            and os.path.realpath(frames[-1].filename).startswith(package))


def _check_initialized() -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "lasp_fx.parallelize needs torch.distributed: run under torchrun and call "
            "torch.distributed.init_process_group() first (gloo on CPU, nccl on GPU)"
        )
