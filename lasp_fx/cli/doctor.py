"""`lasp-fx doctor`: the environment facts that decide which path each piece of lasp_fx takes."""

import os
import platform

import torch
import typer

from lasp_fx.cli.help import examples
from lasp_fx.distributed import peer
from lasp_fx.ops.op import kernels_for


EPILOG = examples("lasp-fx doctor")


def _triton_version() -> str:
    try:
        import triton
    except ImportError as e:
        return f"not importable ({e})"
    return triton.__version__


def _nccl_version() -> str:
    if not torch.distributed.is_available() or not torch.distributed.is_nccl_available():
        return "not available"
    try:
        return ".".join(str(x) for x in torch.cuda.nccl.version())
    except Exception as e:  # e.g. no CUDA runtime
        return f"built in, version unknown ({type(e).__name__})"


def facts() -> list[tuple[str, str]]:
    """(name, value) rows describing this machine as lasp_fx sees it."""
    rows = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("triton", _triton_version()),
        ("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "unset")),
        ("cuda available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"gpu {i}", f"{p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB"))
    dist_ok = torch.distributed.is_available()
    rows.append(("torch.distributed", "available" if dist_ok else "not available"))
    rows.append(("gloo", str(dist_ok and torch.distributed.is_gloo_available())))
    rows.append(("nccl", _nccl_version()))
    rows.append(("op on cpu", _path_name(torch.empty(0))))
    if torch.cuda.is_available():
        rows.append(("op on cuda bf16", _path_name(torch.empty(0, device="cuda", dtype=torch.bfloat16))))
        rows.append(("op on cuda fp64", _path_name(torch.empty(0, device="cuda", dtype=torch.float64))))
    rows.append(("process-group backend", "nccl (GPU)" if torch.cuda.is_available() else "gloo (CPU)"))
    rows.append(("LASP all-gather", _allgather_transport()))
    return rows


def _allgather_transport() -> str:
    """Which transport LASP's all-gather would take between this host's GPUs (distributed/peer.py)."""
    if os.environ.get("LASP_FX_PEER", "1") == "0":
        return "NCCL (LASP_FX_PEER=0)"
    if not torch.cuda.is_available():
        return "gloo collective (no CUDA)"
    if not peer.symmetric_memory_importable():
        return "NCCL collective (torch has no symmetric memory)"
    n = torch.cuda.device_count()
    blocked = [(i, j) for i in range(n) for j in range(n) if i != j and not torch.cuda.can_device_access_peer(i, j)]
    if blocked:
        return f"NCCL collective (no peer access between GPUs {blocked[0][0]} and {blocked[0][1]})"
    return "peer memory (one kernel a direction), for a group on this host"


def _path_name(x: torch.Tensor) -> str:
    module = kernels_for(x).__name__
    return "Triton kernels" if "triton" in module else f"PyTorch chunked path ({module})"


def doctor():
    """Print torch / Triton / CUDA / GPU / NCCL facts and which path the op takes on each device."""
    rows = facts()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")
