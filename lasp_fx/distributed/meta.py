"""Every rank checks that all ranks passed matching inputs, so a mismatch is an error everywhere, not a hang.

One all-gather of 12 int64 per call (shapes, dtype, decay form, method, scale bits), before any
state moves. Its cost: on a group with a CPU backend (gloo, or "cpu:gloo,cuda:nccl") it stays
on the host, tens of microseconds; on an NCCL-only group the 96 bytes go through the GPU and
reading them back waits for the work already queued on the current stream (a host sync: the
GPU runs dry for the launch latency of the next kernel, ~10-50 us). Callers that call with the
same shapes many times (parallelize()) can check on the first call and pass check=False after.
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist
from torch import Tensor

from lasp_fx.distributed.allgather import gather_rows
from lasp_fx.distributed.cost import METHODS

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DECAYS = ("none", "per-head [H]", "per-token [B, T, H]")
_FIELDS = ("B", "T", "H", "H_kv", "D", "E")


def _describe(row: list[int]) -> str:
    shape = dict(zip(_FIELDS, row[:6]))
    dtype = _DTYPES[row[6]] if 0 <= row[6] < len(_DTYPES) else f"dtype#{row[6]}"
    scale = struct.unpack("<d", struct.pack("<q", row[9]))[0]
    return (
        f"q [{shape['B']}, {shape['T']}, {shape['H']}, {shape['D']}], k/v heads {shape['H_kv']}, "
        f"E {shape['E']}, {dtype}, decay {_DECAYS[row[7]]}, method {METHODS[row[8]]}, scale {scale:g}"
    )


def _row(q: Tensor, k: Tensor, v: Tensor, log_decay, scale: float, method: str) -> list[int]:
    B, T, H, D = q.shape
    decay = 0 if log_decay is None else (1 if log_decay.dim() == 1 else 2)
    dtype = _DTYPES.index(q.dtype) if q.dtype in _DTYPES else len(_DTYPES)
    scale_bits = struct.unpack("<q", struct.pack("<d", float(scale)))[0]
    return [B, T, H, k.shape[2], D, v.shape[3], dtype, decay, METHODS.index(method), scale_bits, 0, 0]


def check_same_inputs(group: dist.ProcessGroup, q, k, v, log_decay, scale: float, method: str) -> None:
    """Raise ValueError on every rank unless all ranks of `group` passed the same kind of slice.

    Every rank must pass q/k/v of the same shapes (equal slice lengths T), dtype, decay form,
    scale and resolved method. The initial state is not compared: only rank 0 reads it.
    """
    row = torch.tensor(_row(q, k, v, log_decay, scale, method), dtype=torch.int64)
    on_host = torch.device("cpu") in getattr(group, "_device_types", [torch.device("cpu")])
    if not on_host:
        row = row.to(q.device)
    rows = gather_rows(row, group).tolist()
    if all(r == rows[0] for r in rows):
        return
    lines = "\n".join(f"  rank {i}: {_describe(r)}" for i, r in enumerate(rows))
    raise ValueError(
        f"lasp_fx sequence-parallel linear_attention: the {group.size()} ranks of group "
        f"{group.group_name!r} passed different inputs:\n{lines}\n"
        "Every rank must pass its equal-length slice of one sequence (same batch, heads, head dims, "
        "dtype, decay form, scale and method); shard the sequence evenly over the group."
    )
