"""SequenceMesh: the sequence-parallel group of a DeviceMesh, and the slicing of inputs and outputs.

Holds no global state: everything is derived from the mesh or group it was built from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.utils._pytree import tree_flatten, tree_map

from lasp_fx.config import DEFAULT_TIMEOUT, ShardSpec
from lasp_fx.distributed.allgather import _all_gather_single
from lasp_fx.distributed.errors import ExchangeTimeoutError, RankMismatchError
from lasp_fx.distributed.group import SP_DIM, resolve_group
from lasp_fx.distributed.link import checks_on_host


@dataclass(frozen=True)
class SequenceMesh:
    """The sequence-parallel group and a 1-D DeviceMesh over it (for DTensor outputs)."""

    group: dist.ProcessGroup
    mesh: DeviceMesh

    @staticmethod
    def resolve(mesh=None) -> "SequenceMesh":
        """From a DeviceMesh (1-D or with an "sp" dimension), a ProcessGroup, or None (all ranks)."""
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first (torchrun)")
        if mesh is None:
            mesh = init_device_mesh(_device_type(None), (dist.get_world_size(),), mesh_dim_names=(SP_DIM,))
        if isinstance(mesh, DeviceMesh):
            sp = mesh if mesh.ndim == 1 else mesh[SP_DIM]
            return SequenceMesh(resolve_group(mesh), sp)
        group = resolve_group(mesh)
        return SequenceMesh(group, DeviceMesh.from_group(group, _device_type(group)))

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    def spec(self, method: str, timeout: float = DEFAULT_TIMEOUT) -> ShardSpec:
        return ShardSpec(self.group.group_name, self.rank, self.size, method, timeout)

    # -------------------------------------------------------------------------- inputs
    def shard_inputs(self, args, kwargs, seq_dim: int, mode: str):
        """This rank's slice of every sequence-carrying input, marked dynamic along seq_dim.

        Returns (args, kwargs, local length L).
        """
        from torch.distributed.tensor import DTensor, Shard

        def local_of(t):  # a DTensor sharded on the sequence is already this rank's slice
            if isinstance(t, DTensor):
                if list(t.placements) != [Shard(seq_dim)]:
                    raise ValueError(f"DTensor inputs must be sharded as [Shard({seq_dim})], got {list(t.placements)}")
                return t.to_local()
            return t

        if any(isinstance(t, DTensor) for t in tree_flatten((args, kwargs))[0]):
            args, kwargs = tree_map(local_of, (args, kwargs))
            mode = "local"
        flat, _ = tree_flatten((args, kwargs))
        seqs = [t for t in flat if isinstance(t, Tensor) and t.dim() > seq_dim]
        if not seqs:
            raise ValueError(f"no input tensor has a dimension {seq_dim} (seq_dim) to split the sequence along")
        n = seqs[0].shape[seq_dim]
        if mode == "full":
            if n % self.size:
                raise ValueError(
                    f"the sequence length {n} (dim {seq_dim} of the inputs) is not divisible by the "
                    f"{self.size} sequence-parallel ranks: pad the batch to a multiple of {self.size} "
                    "(with label -100 on the padding so the loss ignores it)"
                )
            local = n // self.size
        else:
            local = n
        if local < 2:
            raise ValueError(f"each rank needs at least 2 tokens of the sequence, got {local}")

        def shard(t):
            if not isinstance(t, Tensor) or t.dim() <= seq_dim:
                return t
            if t.shape[seq_dim] != n:
                raise ValueError(
                    f"input of shape {list(t.shape)} has {t.shape[seq_dim]} in dim {seq_dim}, but the "
                    f"sequence is {n} long: every input with a sequence dim must have it at seq_dim={seq_dim}"
                )
            if mode == "full":
                t = t.narrow(seq_dim, self.rank * local, local)
            torch._dynamo.mark_dynamic(t, seq_dim)
            return t

        args, kwargs = tree_map(shard, (args, kwargs))
        return args, kwargs, local

    def check_same_batch(self, args, kwargs, first: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Every rank must pass inputs of the same shapes: raise ValueError on every rank if not.

        On the first call always. After it only where the group has a CPU backend (gloo), where
        the check is one all-gather of 8 bytes on the host: on an NCCL group it would wait for the
        GPU, so there the state messages' headers check each call instead (distributed/header.py,
        distributed/watch.py); LASP_FX_DEVICE_CHECKS=1 does the same on gloo (link.checks_on_host).
        """
        cpu = torch.device("cpu")
        on_host = cpu in getattr(self.group, "_device_types", [cpu]) and checks_on_host(cpu)
        if not first and not on_host:
            return
        flat, _ = tree_flatten((args, kwargs))
        shapes = [list(t.shape) for t in flat if isinstance(t, Tensor)]
        if on_host:  # a digest first: the full shapes travel only when they differ
            digest = int.from_bytes(hashlib.sha256(repr(shapes).encode()).digest()[:7], "little")
            mine = torch.tensor([digest], dtype=torch.int64)
            out = mine.new_empty(self.size)
            work = _all_gather_single(out, mine, group=self.group, async_op=True)
            try:
                work.wait(timedelta(seconds=timeout))
            except RuntimeError as e:
                raise ExchangeTimeoutError(
                    f"rank {self.rank}: the ranks' input shapes were not all gathered within {timeout:g} s "
                    f"(lasp_fx parallelize): a rank failed before this call, died, or is stuck elsewhere. Cause: {e}"
                ) from None
            if bool((out == digest).all()):
                return
        gathered = [None] * self.size
        dist.all_gather_object(gathered, shapes, group=self.group)
        if any(g != shapes for g in gathered):
            per_rank = "; ".join(f"rank {r}: {g}" for r, g in enumerate(gathered))
            raise RankMismatchError(
                f"ranks of the sequence-parallel group passed inputs of different shapes ({per_rank}); "
                "every rank must pass the same batch (or its own equal-length slice of it) on every call"
            )

    # -------------------------------------------------------------------------- outputs
    def wrap_outputs(self, out, seq_dim: int, local: int, mode: str):
        """Outputs whose seq_dim has the local length become DTensors (or local / gathered tensors)."""
        from torch.distributed.tensor import DTensor, Shard

        def wrap(t):
            if not isinstance(t, Tensor) or t.dim() <= seq_dim or t.shape[seq_dim] != local or mode == "local":
                return t
            dt = DTensor.from_local(t, self.mesh, [Shard(seq_dim)], run_check=False)
            return dt.full_tensor() if mode == "full" else dt

        return tree_map(wrap, out)


def _device_type(group) -> str:
    """The device type of a DeviceMesh over `group` (None: the default group): "cuda" where its backend
    includes NCCL ("nccl", or a mixed "cpu:gloo,cuda:nccl"), else "cpu"."""
    return "cuda" if torch.cuda.is_available() and "nccl" in dist.get_backend(group) else "cpu"


def shard_batch(batch, mesh=None, seq_dim: int = 1):
    """This rank's slice of every tensor in `batch` (a tensor, dict, list or tuple) along `seq_dim`.

    For the memory-efficient path (`parallelize(..., inputs="local")`): load or build the batch,
    keep only the local slice of input ids, labels, position ids and masks.
    """
    smesh = SequenceMesh.resolve(mesh)
    (sliced,), _, _ = smesh.shard_inputs((batch,), {}, seq_dim, "full")
    return sliced
