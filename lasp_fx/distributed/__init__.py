"""LASP across ranks: ring (P2P) and all-gather state exchanges after the local state passes."""

from lasp_fx.distributed.cost import estimate
from lasp_fx.distributed.group import resolve_group
from lasp_fx.distributed.lasp import sequence_parallel_attention

__all__ = ["estimate", "resolve_group", "sequence_parallel_attention"]
