"""Peer memory for LASP's all-gather: every rank's slots and flags mapped into every other rank.

The buffers live in symmetric memory (one host, peer access over NVLink or PCIe). Building them
is collective, so it happens at the first exchange of a state shape, which every rank makes at
the same point; `usable(group, device, dtype)` decides once per group, the same on every rank,
whether the path applies (a CUDA float32 state, one host, `LASP_FX_PEER` not 0).
"""

from __future__ import annotations

import importlib
import os
import socket
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from lasp_fx.distributed.kernels import peer as kernel


@dataclass
class PeerBuffers:
    """What distributed/kernels/peer.exchange needs on one rank."""

    slots: Tensor
    """[P * tiles * SLOT] float32: row j, tile t holds rank j's tile t of its last state sent here."""
    flags: Tensor
    """[P * tiles] int32: 1 while rank j's tile t waits in its slot, else 0."""
    peer_slots: Tensor
    """[P] int64: the address of every rank's `slots` as mapped into this process (ours included)."""
    peer_flags: Tensor
    """[P] int64: likewise for `flags`."""
    status: Tensor
    """[1] int32: set to 1 by a program that gave up waiting."""
    mapped: tuple = ()
    """What keeps the memory behind the addresses mapped (the symmetric tensor; in tests, the files)."""


# Keyed by the group object (weakly): a group destroyed and made again gets fresh answers and
# buffers even where it reuses the old name.
_BUFFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # group -> {(device, shape): PeerBuffers}
_USABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # group -> bool


def usable(group, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `group` exchanges states of `dtype` on `device` through peer memory (module docstring)."""
    if device.type != "cuda" or dtype != torch.float32 or os.environ.get("LASP_FX_PEER", "1") == "0":
        return False
    if group not in _USABLE:  # once per group: one host sync, the same answer on every rank
        hosts = [None] * group.size()
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        _USABLE[group] = len(set(hosts)) == 1 and symmetric_memory_importable()
    return _USABLE[group]


def symmetric_memory_importable() -> bool:
    """Whether this torch build has torch.distributed._symmetric_memory (the buffers' allocator)."""
    try:
        importlib.import_module("torch.distributed._symmetric_memory")
    except ImportError:
        return False
    return True


def buffers(group, shape, device: torch.device) -> PeerBuffers:
    """This rank's buffers for states of `shape` [B, H, D, E] on `group` (built collectively on first use)."""
    mine = _BUFFERS.setdefault(group, {})
    key = (device.index, tuple(shape))
    if key not in mine:
        mine[key] = _build(group, kernel.tiles(*shape), device)
    return mine[key]


def _build(group, tiles: int, device: torch.device) -> PeerBuffers:
    import torch.distributed._symmetric_memory as symm_mem

    P = group.size()
    n_slots, n_flags = P * tiles * kernel.SLOT, P * tiles
    # An allocation of its own (what symm_mem.empty gives with TORCH_SYMMMEM_IMPLICIT_POOL=0), so
    # the buffer starts its mapping and the peers' addresses need no offset into a shared pool.
    raw = symm_mem._SymmetricMemory.empty_strided_p2p((n_slots + n_flags,), (1,), torch.float32, device)
    raw.zero_()
    handle = symm_mem.rendezvous(raw, group.group_name)
    # every rank's buffer as mapped here: get_buffer gives a tensor view of it (data_ptr is the address)
    bases = torch.tensor([handle.get_buffer(j, raw.shape, raw.dtype).data_ptr() for j in range(P)], dtype=torch.int64)
    torch.cuda.synchronize(device)
    dist.barrier(group=group, device_ids=[device.index])  # every rank's flags are zero before anyone raises one
    return PeerBuffers(
        slots=raw[:n_slots],
        flags=raw[n_slots:].view(torch.int32),
        peer_slots=bases.to(device),
        peer_flags=(bases + n_slots * 4).to(device),
        status=torch.zeros(1, dtype=torch.int32, device=device),
        mapped=(raw, handle),
    )


def exchange(x: Tensor, log_decay, d_final, group, forward: bool, own_tail=None, checked: int = 0, watch=None):
    """(late, end) of distributed/kernels/gathered.py through peer memory; see distributed/kernels/peer.exchange
    (with `own_tail`, the senders' headers are checked in the kernel, a mismatch recorded in `watch`)."""
    bufs = buffers(group, x.shape, x.device)
    return kernel.exchange(x, log_decay, d_final, group.rank(), group.size(), forward, bufs, own_tail=own_tail,
                           checked=checked, watch=watch)


def release() -> None:
    """Drop every peer buffer and usability answer (they are rebuilt on the next exchange)."""
    _BUFFERS.clear()
    _USABLE.clear()
