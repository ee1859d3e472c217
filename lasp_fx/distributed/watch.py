"""What the CUDA path's header checks saw, per group: raised as RankMismatchError at the next step's first forward.

On CUDA the exchanges' kernels compare every received header with this rank's on the device
(header.py) and a mismatch turns the results into NaN, with no host sync. They also write the
mismatched headers, and this rank's own, into the group's `Watch.rows`. Each backward call then
queues an asynchronous copy of those rows to pinned memory and an event; the first lasp_fx
forward after a backward (a new training step) reads the copy (waiting for the event only where
the GPU is still behind the previous step's last exchange) and raises, naming each rank's values.
Only there: every rank reaches that point after the same calls and, the backward having checked
every other rank's header, raises alike, before any exchange of the step. A rank that raised
where others did not would leave them waiting in the exchange (docs/design.md §4).

Held by the group object, weakly, as peer.py's buffers: a ProcessGroup takes no attributes, a
Link lives for one call, and the custom op receives the group only by its name.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from lasp_fx.distributed import header as hdr
from lasp_fx.distributed.errors import RankFailedError, RankMismatchError

ROW = 1 + hdr.SIZE  # per source rank: 1.0 where its message's header differed, then that header

_WATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # group -> {device: Watch}


class Watch:
    """One rank's record of mismatched messages on one group and device (module docstring)."""

    def __init__(self, size: int, device: torch.device):
        self.rows = torch.zeros(size + 1, ROW, dtype=torch.float32, device=device)
        """[P + 1, ROW]: row j for the messages from rank j, row P this rank's header when any differed."""
        cuda = self.rows.is_cuda
        self.host = torch.zeros_like(self.rows, device="cpu").pin_memory() if cuda else self.rows
        self.event = torch.cuda.Event() if cuda else None
        self.recorded = False  # whether `event` marks a copy into `host` (on CUDA)
        self.after_backward = False  # whether a backward call came since the last forward outside a backward

    def start(self, forward: bool, group) -> None:
        """At the start of a call: the first forward after a backward raises what the record holds."""
        if not (forward and self.after_backward) or _in_backward() or _capturing(self.rows):
            return
        self.after_backward = False
        self.settle(group)

    def finish(self, forward: bool) -> None:
        """At the end of a call: after a backward, queue the copy of the record the next step reads."""
        if forward or _capturing(self.rows):
            return
        self.after_backward = True
        if self.event is not None:
            self.host.copy_(self.rows, non_blocking=True)
            self.event.record()
            self.recorded = True

    def note(self, differs: Tensor, tails: Tensor, sources: list[int], own_tail: Tensor) -> None:
        """What the kernels write (distributed/kernels/gathered._note), in PyTorch ops: for Link.open's
        device path. differs [m] bool, tails [m, SIZE] the headers received from ranks `sources`."""
        at = torch.tensor(sources, device=self.rows.device)
        flagged = torch.cat([torch.ones_like(tails[:, :1]), tails], 1).to(self.rows.dtype)
        self.rows[at] = torch.where(differs[:, None], flagged, self.rows[at])
        own = torch.cat([own_tail.new_ones(1), own_tail]).to(self.rows.dtype)
        self.rows[-1] = torch.where(differs.any(), own, self.rows[-1])

    def settle(self, group) -> None:
        """Raise RankMismatchError (RankFailedError for a failed sender) if the record holds a mismatch."""
        if self.event is not None:
            if not self.recorded:
                return
            self.event.synchronize()  # returns at once where the GPU is past the copy: the usual case
        values = self.host.tolist()
        if not any(row[0] for row in values):
            return
        self.rows.zero_()
        if self.host is not self.rows:
            self.host.zero_()
        raise error(values, group)


def of(group, device: torch.device) -> Watch:
    """The group's Watch on `device` (made at its first call there)."""
    mine = _WATCHES.setdefault(group, {})
    key = (device.type, device.index)
    if key not in mine:
        mine[key] = Watch(group.size(), device)
    return mine[key]


def error(values: list, group) -> Exception:
    """The error for a record `values` (Watch.rows as lists): each differing sender's values and this rank's."""
    size = len(values) - 1
    own = hdr.Header.decode(values[size][1:])
    got = {}
    for j, row in enumerate(values[:size]):
        if row[0]:
            h = hdr.Header.decode(row[1:])
            got[j if h is None else h.rank] = h
    me = group.rank() if own is None else own.rank
    for h in got.values():
        if h is not None and h.status == hdr.FAILED:
            reason = f": {h.reason}" if h.reason else ""
            return RankFailedError(
                f"rank {h.rank} failed inside lasp_fx's sequence-parallel linear_attention in an earlier call"
                f"{reason}; rank {me}'s results of that call were NaN, and it stops at this call (on CUDA a "
                "failure is found after the call: docs/design.md §4)"
            )
    when = (" in an earlier call, whose results were NaN (on CUDA the headers are checked on the device "
            "and raised at the latest at the next call's forward: docs/design.md §4)")
    return RankMismatchError(hdr.mismatch_message({me: own, **got}, group, when))


def _in_backward() -> bool:
    """Inside autograd's backward (a checkpointed block's recomputed forward), which is no new step."""
    return torch._C._current_graph_task_id() != -1


def _capturing(rows: Tensor) -> bool:
    """Under CUDA graph capture nothing may be read or waited for; the replays' kernels still record."""
    return rows.is_cuda and torch.cuda.is_current_stream_capturing()
