"""Spawned-rank worker for the bad-input table's rows that need a process group (tests/test_bad_inputs.py)."""

from __future__ import annotations

import torch


def _call(row: str):
    import lasp_fx
    from torch.distributed.tensor import Replicate, distribute_tensor
    from torch.distributed.device_mesh import init_device_mesh

    ids = torch.zeros(2, 6, dtype=torch.long)
    if row == "shard_batch-not-divisible":
        return lasp_fx.shard_batch(torch.zeros(2, 7, dtype=torch.long))
    if row == "shard_batch-T<P":
        return lasp_fx.shard_batch(torch.zeros(2, 2, dtype=torch.long))
    if row == "shard_batch-no-seq-dim":
        return lasp_fx.shard_batch(torch.zeros(5))
    model = lasp_fx.parallelize(torch.nn.Embedding(8, 4).double(), compiler="eager")
    if row == "parallelize-dtensor-replicated":
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("sp",))
        return model(distribute_tensor(ids, mesh, [Replicate()]))
    if row == "parallelize-T<P":
        return model(torch.zeros(2, 2, dtype=torch.long))
    if row == "op-timeout-negative":
        x = torch.randn(1, 4, 2, 4)
        return lasp_fx.linear_attention(x, x, x, group=torch.distributed.group.WORLD, timeout=-1)
    raise KeyError(row)


def errors(rank: int, world: int, rows: list[str]) -> dict:
    """{row: (error type name, message)} for each row's call on this rank."""
    out = {}
    for row in rows:
        try:
            _call(row)
            out[row] = (None, "")
        except Exception as e:  # noqa: BLE001 - the error is the result
            out[row] = (type(e).__name__, str(e))
    return out
