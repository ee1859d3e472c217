"""One call's exchange context: the group, this rank's header, the timeout, and what it still owes its peers.

Messages are sealed with the header (header.py) and opened with a check of the senders' headers;
every wait is bounded by `timeout` on a CPU group (on CUDA the host never waits: NCCL's watchdog,
set by the process group's own timeout, and the peer kernel's spin bound it there). A rank that
fails before it has sent what its peers wait for sends them a FAILED header in its place
(`abandon`), so they raise at once instead of waiting out the timeout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import Tensor

from lasp_fx.distributed import header as hdr
from lasp_fx.distributed.errors import ExchangeTimeoutError, RankFailedError, RankMismatchError


def checks_on_host(device: torch.device) -> bool:
    """Whether a call's exchange with states on `device` takes the host path (see Link.host)."""
    return device.type == "cpu" and os.environ.get("LASP_FX_DEVICE_CHECKS", "0") != "1"


@dataclass
class Link:
    """What one direction of one call's exchange needs besides the states (module docstring)."""

    group: object
    header: hdr.Header
    timeout: float
    state_shape: tuple
    dtype: torch.dtype
    device: torch.device
    has_decay: bool
    host: bool = True
    """Check headers on the host and bound waits by `timeout` (CPU states); False: the CUDA path,
    whose checks run in the combination kernels (also on CPU with LASP_FX_DEVICE_CHECKS=1, so
    tests run those kernels under Triton's interpreter)."""
    sent: bool = False
    """Whether this rank's message of this direction has left (then there is nothing to abandon)."""
    peers: bool = False
    """Whether the all-gather goes through peer memory (peer.usable, asked once per call)."""
    watch: object = None
    """The CUDA path's record of mismatched headers (distributed/watch.py: the group's Watch), else None."""

    @property
    def record(self):
        """Where the exchange kernels write a mismatched header (Watch.rows), or None."""
        return None if self.watch is None else self.watch.rows

    @property
    def on_host(self) -> bool:
        return self.host

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def what(self) -> str:
        return "state" if self.header.direction == 0 else "state gradient"

    def tail(self) -> Tensor:
        """This rank's header as a tensor of the state dtype on the state's device (cached per header)."""
        return hdr.encoded(self.header, self.dtype, self.device)

    def seal(self, parts: list[Tensor], status: hdr.Header | None = None) -> Tensor:
        """One flat message: `parts` flattened, then the header (or `status`, a FAILED header)."""
        tail = self.tail() if status is None else hdr.as_tensor(status, parts[0])
        return torch.cat([p.reshape(-1).to(self.dtype) for p in parts] + [tail])

    def open(self, rows: Tensor, sources: list[int]) -> Tensor:
        """rows [m, n + SIZE] from ranks `sources`: the payloads [m, n], once the headers check out.

        On the host a FAILED header raises RankFailedError and a different one RankMismatchError;
        on CUDA a mismatch of any row makes every payload NaN (no host sync: module docstring) and
        is written into the watch (raised at the next step: distributed/watch.py). The exchanges'
        CUDA paths check inside their combination kernels instead (distributed/kernels/gathered.py).
        """
        payload, tails = rows[:, : -hdr.SIZE], rows[:, -hdr.SIZE:]
        if not sources:
            return payload
        if not self.on_host:
            # status included: a FAILED sender never matches; a slice, so no index tensor to copy over
            differs = (tails[:, hdr.CHECKED] != self.tail()[hdr.CHECKED]).any(1)
            if self.watch is not None:
                self.watch.note(differs, tails, sources, self.tail())
            return torch.where(differs.any(), torch.nan, payload)
        got = {src: hdr.Header.decode(t) for src, t in zip(sources, tails.tolist())}
        for src, h in got.items():
            if h is None:
                raise RankMismatchError(
                    f"rank {self.rank}: the message from rank {src} carries no lasp_fx header: the ranks of "
                    f"group {self.group.group_name!r} are not in the same call (different code paths or methods)"
                )
            if h.status == hdr.FAILED:
                error = RankFailedError(
                    f"rank {h.rank} failed inside lasp_fx's sequence-parallel linear_attention ({_DIR[h.direction]}): "
                    f"{h.reason}; rank {self.rank} stops too"
                )
                error.origin = h
                raise error
        if any(h.key() != self.header.key() for h in got.values()):
            error = RankMismatchError(hdr.mismatch_message({self.rank: self.header, **got}, self.group))
            src, other = next((r, h) for r, h in got.items() if h.key() != self.header.key())
            error.short = f"inputs differ from rank {src}'s: {self.header.differences(other)}"
            raise error
        return payload

    def wait(self, work, peer: str) -> None:
        """Wait for `work` (a recv, send or collective with `peer`: "rank 2", or "all ranks" for a
        collective, where gloo cannot tell which one is missing); bounded by the timeout on the host."""
        if not self.on_host:
            work.wait()  # NCCL: the stream waits, not the host
            return
        try:
            work.wait(timedelta(seconds=self.timeout))
        except RuntimeError as e:
            culprit = "that rank" if peer.startswith("rank") else "one of them"
            raise ExchangeTimeoutError(
                f"rank {self.rank}: the {self.what} exchange with {peer} of group {self.group.group_name!r} did "
                f"not complete within {self.timeout:g} s (lasp_fx linear_attention, {_DIR[self.header.direction]}): "
                f"{culprit} failed before its exchange, died, or is stuck elsewhere. "
                f"Cause: {str(e).strip()[:300]}"
            ) from None

    def failure(self, error: BaseException) -> hdr.Header:
        """The FAILED header to send in place of this rank's message: the first failure's, passed on."""
        origin = getattr(error, "origin", None)
        if origin is not None:
            return origin
        reason = getattr(error, "short", None) or f"{type(error).__name__}: {error}"
        return self.header.failed(reason.replace("\n", " "))


_DIR = ("forward", "backward")
