"""Spawned-rank worker for the bad-input table's rows that need a process group (tests/test_bad_inputs.py)."""

from __future__ import annotations

import threading

import torch


class _Models:
    """Models dynamo cannot trace as one graph, each in its own way (rows "parallelize-trace-*")."""

    class LoopOnValues(torch.nn.Module):
        def forward(self, ids):
            out = torch.zeros(ids.shape, dtype=torch.float64)
            for i in ids.flatten().unique():  # one step per distinct value: a count set by the data
                out = out + (ids == i)
            return out

    class Lock(torch.nn.Module):
        def forward(self, ids):
            with _LOCK:
                return ids * 2.0

    class Asserts(torch.nn.Module):
        def forward(self, ids):
            assert ids.shape[1] % 4 == 0, f"length {ids.shape[1]} is not a multiple of 4"
            return ids * 2.0

    class FixedLength(torch.nn.Module):
        def forward(self, ids):
            return torch.stack([ids[:, t] * 2.0 for t in range(ids.shape[1])], 1)


_LOCK = threading.Lock()


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
    if row == "parallelize-trace-nested-region":  # dynamo's bug: invoke_subgraph inside a checkpoint, dynamic length
        from tests.helpers.models import CompiledRegionLM

        return lasp_fx.parallelize(CompiledRegionLM(), compiler="eager")(torch.arange(24).view(2, 12) % 32)
    if row.startswith("parallelize-trace-"):
        kind = {"loop-on-values": "LoopOnValues", "lock": "Lock", "asserts": "Asserts", "fixed-length": "FixedLength"}
        model = lasp_fx.parallelize(getattr(_Models, kind[row.removeprefix("parallelize-trace-")])(), compiler="eager")
        return model(torch.arange(12).view(2, 6) % 3)  # 3 tokens a rank
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
