"""Which process group carries the sequence: a ProcessGroup, a DeviceMesh (its "sp" dimension) or a name."""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

SP_DIM = "sp"


def resolve_group(group) -> dist.ProcessGroup:
    """The sequence-parallel ProcessGroup named by `group`.

    Args:
        group: a `ProcessGroup`; a 1-D `DeviceMesh`; a multi-dimensional `DeviceMesh` with a
            dimension named "sp" (e.g. `init_device_mesh("cuda", (dp, sp), mesh_dim_names=("dp", "sp"))`:
            only the "sp" dimension's group is used, so every data-parallel replica runs its own
            sequence); or a group name string (`ProcessGroup.group_name`).

    Raises:
        RuntimeError: a group name while torch.distributed is not initialised.
        ValueError / TypeError: a mesh without an "sp" dimension, or an object of another type.
    """
    # One isinstance per type: under dynamo a ProcessGroup is a script object that passes
    # isinstance(x, ProcessGroup) but not isinstance(x, (ProcessGroup, ...)).
    if isinstance(group, dist.ProcessGroup):
        return group
    if isinstance(group, DeviceMesh):
        if group.ndim == 1:
            return group.get_group()
        names = group.mesh_dim_names or ()
        if SP_DIM in names:
            return group.get_group(SP_DIM)
        raise ValueError(
            f"group is a {group.ndim}-D DeviceMesh with dimensions {names or 'unnamed'}: name the "
            f"sequence-parallel dimension {SP_DIM!r} (mesh_dim_names=(..., {SP_DIM!r})) or pass mesh[<dim>]"
        )
    if not isinstance(group, str):
        raise TypeError(
            f"group must be a torch.distributed ProcessGroup, a DeviceMesh or a group name, got {type(group).__name__}"
        )
    if not dist.is_initialized():
        raise RuntimeError(
            f"group={group!r} names a process group, but torch.distributed is not initialised: call "
            "torch.distributed.init_process_group (or run under torchrun) first"
        )
    return dist.distributed_c10d._resolve_process_group(group)
