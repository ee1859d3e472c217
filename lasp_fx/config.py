"""The options of parallelize() and of the sharding pass, defined and validated here alone.

Every choice is a `Literal`; `choose` is the one check of a choice, so that every entry point
(parallelize, the "lasp" backend, `linear_attention(group=...)`) refuses a bad value alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args, get_origin, get_type_hints

Method = Literal["auto", "ring", "allgather"]
Inputs = Literal["full", "local"]
Outputs = Literal["dtensor", "local", "full"]
Compiler = Literal["auto", "inductor", "aot_eager", "eager"]
Checkpoint = Literal["none", "blocks"]

EXCHANGES = ("ring", "allgather")
"""The methods that move states (Method without "auto"), in the order the message header numbers them."""

DEFAULT_TIMEOUT = 600.0
"""Seconds a rank waits for a peer's state: NCCL's default watchdog timeout, long enough for a
peer saving a checkpoint or compiling a graph, short enough that a dead job frees its machines."""


def choose(name: str, value, choices) -> str:
    """`value` when it is one of `choices` (a Literal or a tuple); else ValueError naming both."""
    allowed = get_args(choices) or tuple(choices)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def check_timeout(timeout) -> float:
    """`timeout` when it is a positive number of seconds; else ValueError."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


def _check_fields(config) -> None:
    """Every Literal field of a config dataclass holds one of its choices, and its timeout is positive."""
    hints = get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if get_origin(hints[field.name]) is Literal:
            choose(field.name, getattr(config, field.name), hints[field.name])
    check_timeout(config.timeout)


@dataclass(frozen=True)
class ParallelConfig:
    """How `parallelize` splits the sequence and runs the result."""

    seq_dim: int = 1
    """The dimension of the sequence in every input tensor that carries it (ids, labels, masks)."""
    method: Method = "auto"
    """How linear attention passes states between ranks: "ring", "allgather" or "auto"."""
    inputs: Inputs = "full"
    """"full": every rank passes the whole batch and keeps its slice; "local": every rank passes
    only its slice (rank r: tokens [r*L, (r+1)*L)), the memory-efficient path for long inputs."""
    outputs: Outputs = "dtensor"
    """Outputs that carry the sequence come back as "dtensor" (sharded on seq_dim; `.full_tensor()`
    gathers), "local" (this rank's slice) or "full" (gathered on every rank). Scalars, such as a
    loss, are the global value on every rank."""
    checkpoint: Checkpoint = "none"
    """"blocks": every child of the model's largest nn.ModuleList (its layers) runs under
    non-reentrant activation checkpointing (lasp_fx.memory.checkpoint_blocks): only each block's
    input is kept for backward, the rest is recomputed. "none": the model as written (its own
    torch.utils.checkpoint calls, either form, are honoured too). Recomputation needs an
    AOTAutograd compiler: with compiler="eager" the result is the same, the memory is not."""
    offload: bool = False
    """Keep the large activations saved for backward (with checkpoint="blocks": each block's input)
    in host memory, copied back before their backward (AOTAutograd's activation offloading)."""
    compiler: Compiler = "auto"
    """What runs the rewritten graph: "inductor", "aot_eager", "eager", or "auto" (inductor on
    CUDA, aot_eager on CPU, where Inductor's C++ compile is slow)."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds a rank waits in linear attention's state exchange for a peer that failed, died or
    is stuck, before it raises ExchangeTimeoutError naming that peer (a peer that fails inside the
    exchange is reported at once). On CPU (gloo) groups; on CUDA the process group's timeout
    bounds NCCL's waits (init_process_group(timeout=...), 10 minutes by default), as it bounds
    the other collectives of the step."""

    def __post_init__(self):
        _check_fields(self)


@dataclass(frozen=True)
class ShardSpec:
    """Where this rank sits in the sequence-parallel group (what the sharding pass needs)."""

    group_name: str
    """Name of the sequence-parallel ProcessGroup (`ProcessGroup.group_name`)."""
    rank: int
    """This rank's index in that group: it holds tokens [rank * s, (rank + 1) * s)."""
    world_size: int
    """Number of ranks the sequence is split over."""
    method: Method = "auto"
    """State exchange of the LASP op: "ring", "allgather" or "auto"."""
    timeout: float = DEFAULT_TIMEOUT
    """Seconds the LASP op waits for a peer's state on a CPU group (ParallelConfig.timeout)."""

    def __post_init__(self):
        _check_fields(self)
