"""Spawned ranks of tests/test_peer.py: the peer exchange kernel under Triton's interpreter, buffers shared as files."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from lasp_fx.distributed.peer import PeerBuffers
from lasp_fx.distributed.kernels import peer as kernel


def make_files(tmp: str, P: int, shape) -> None:
    """Zeroed backing files of every rank's slots and flags (what symmetric memory gives on a GPU)."""
    tiles = kernel.tiles(*shape)
    for j in range(P):
        for name, n in (("slots", P * tiles * kernel.SLOT), ("flags", P * tiles)):
            with open(os.path.join(tmp, f"{name}{j}"), "wb") as fh:
                fh.truncate(4 * n)


def _buffers(rank: int, P: int, tmp: str, shape) -> PeerBuffers:
    tiles = kernel.tiles(*shape)
    slots = [torch.from_file(os.path.join(tmp, f"slots{j}"), shared=True, size=P * tiles * kernel.SLOT,
                             dtype=torch.float32) for j in range(P)]
    flags = [torch.from_file(os.path.join(tmp, f"flags{j}"), shared=True, size=P * tiles, dtype=torch.int32)
             for j in range(P)]
    return PeerBuffers(slots[rank], flags[rank], torch.tensor([s.data_ptr() for s in slots]),
                       torch.tensor([f.data_ptr() for f in flags]), torch.zeros(1, dtype=torch.int32),
                       mapped=(slots, flags))


def exchanges(rank: int, P: int, tmp: str, calls: list, spin: int = 1 << 20, lengths: list | None = None) -> list:
    """Run `calls` [(forward, x [P, B, H, D, E], a [P, B, H] or None, d_final or None), ...] in order,
    this rank passing its own x and a; returns [(late, end), ...] and the flags left behind, as numpy
    arrays (a tensor sent back would be shared memory that dies with this process). With `lengths`,
    each rank's header says its slice is lengths[rank] tokens long, and the kernel checks them and
    records a mismatch in a watch (distributed/watch.py), returned third."""
    bufs = _buffers(rank, P, tmp, calls[0][1].shape[1:])
    tail = {}
    if lengths is not None:
        from lasp_fx.distributed import header, watch

        B, H, D, E = calls[0][1].shape[1:]
        q = torch.zeros(B, lengths[rank], H, D)
        head = header.make(q, q, torch.zeros(B, lengths[rank], H, E), None, 1.0, "allgather", "forward", rank)
        tail = dict(own_tail=header.as_tensor(head, q), checked=header.CHECKED.stop,
                    watch=torch.zeros(P + 1, watch.ROW))
    dist.barrier()
    out = []
    for forward, x, a, d_final in calls:
        late, end = kernel.exchange(x[rank], None if a is None else a[rank], d_final, rank, P, forward, bufs, spin,
                                    **tail)
        out.append((late.numpy(), end.numpy()))
    dist.barrier()  # every rank done: the flags must all be down again
    return [out, bufs.flags.numpy().copy()] + ([tail["watch"].numpy()] if tail else [])


def lone_receiver(rank: int, P: int, tmp: str, shape, spin: int) -> str:
    """Rank 1 waits for a forward state that rank 0 never sends: the error it gets."""
    if rank == 0:
        return ""
    x = torch.zeros(shape)
    try:
        kernel.exchange(x, None, None, rank, P, True, _buffers(rank, P, tmp, shape), spin)
    except RuntimeError as e:
        return str(e)
    return "no error"


def usable_answers(rank: int, P: int) -> dict:
    """peer.usable on this rank for each kind of state, and whether the answer is kept per group."""
    from lasp_fx.distributed import peer

    group = dist.group.WORLD
    cuda = torch.device("cuda")
    answers = {
        "cpu": peer.usable(group, torch.device("cpu"), torch.float32),
        "cuda_float64": peer.usable(group, cuda, torch.float64),
        "cuda_float32": peer.usable(group, cuda, torch.float32),  # hostnames gathered (gloo) here
    }
    answers["kept"] = group in peer._USABLE
    os.environ["LASP_FX_PEER"] = "0"
    answers["turned_off"] = peer.usable(group, cuda, torch.float32)
    peer.release()
    answers["released"] = group not in peer._USABLE
    return answers
