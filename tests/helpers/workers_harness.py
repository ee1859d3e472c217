"""Spawned-rank workers that test the spawn harness itself: a working group, an error, a hang."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


def sum_of_ranks(rank: int, world: int, tag: str) -> dict:
    """All-reduce the ranks: proves every child joined one group."""
    x = torch.tensor([float(rank)])
    dist.all_reduce(x)
    return {"rank": rank, "world": world, "sum": float(x), "tag": tag, "threads": torch.get_num_threads()}


def raise_on(rank: int, world: int, bad_rank: int) -> None:
    if rank == bad_rank:
        raise ValueError(f"planted failure on rank {rank}")
    dist.barrier()  # the others wait for the failed rank, as real code would


def hang(rank: int, world: int, seconds: float) -> None:
    time.sleep(seconds)
