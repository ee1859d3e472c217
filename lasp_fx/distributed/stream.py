"""Communication on a side stream: started from a kernel's state hook, joined before the correction kernel.

On CUDA the exchange is queued on its own stream, so it runs while the compute stream works on
the outputs; the compute stream waits on one event, right before the correction that needs the
incoming state. No host thread ever blocks on the GPU here (NCCL `work.wait()` only makes the
current stream wait). On CPU (gloo) everything runs inline and the calls simply block.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


class SideStream:
    """The side stream of one call (CUDA with `overlap`), or nothing (CPU, or no work to overlap).

    Tensors made on the side stream and used later on the compute stream are recorded on it in
    `join`, so the caching allocator does not hand their memory out again too early. Without
    `overlap` (the forward, whose output kernel needs the incoming state at once) the exchange is
    queued on the compute stream itself: no stream, event or record_stream to pay for.
    """

    def __init__(self, device: torch.device, overlap: bool = True):
        self.cuda = device.type == "cuda" and overlap
        if self.cuda:
            self.main = torch.cuda.current_stream(device)
            self.side = torch.cuda.Stream(device=device)  # from torch's stream pool: no allocation
            self.ready = torch.cuda.Event()
            self._entered = False

    @contextlib.contextmanager
    def active(self):
        """Make the side stream current; the first entry orders it after the work queued so far."""
        if not self.cuda:
            yield
            return
        if not self._entered:
            self.side.wait_stream(self.main)
            self._entered = True
        with torch.cuda.stream(self.side):
            yield

    def mark(self) -> None:
        """Everything queued on the side stream so far is what the compute stream will wait for."""
        if self.cuda:
            self.ready.record(self.side)

    def join(self, tensors) -> None:
        """Make the compute stream wait for the marked work and own `tensors` from now on."""
        if self.cuda:
            self.main.wait_event(self.ready)
            for t in tensors:
                if t is not None:
                    t.record_stream(self.main)


class Pending:
    """Results of an exchange in flight, plus sends that must finish before their buffers are reused."""

    def __init__(self, side: SideStream, values: tuple, sends=()):
        self.side, self.values, self.sends = side, values, list(sends)
        self._joined = False

    def result(self) -> tuple:
        """The values, usable on the compute stream (joins once; later calls just return them)."""
        if not self._joined:
            self.side.join(self.values)
            self._joined = True
        return self.values

    def finish(self) -> None:
        """Wait for the sends: called once the call's own kernels are queued, so nothing stalls on them.

        On CUDA only the stream waits (NCCL), never the host; this keeps the sent buffers alive
        until the send completes, whatever the allocator does.
        """
        for work in self.sends:
            work.wait()
        self.sends = []


def step(x: Tensor, log_decay, s: Tensor) -> Tensor:
    """exp(A) * x + s per batch and head: carry state x through a slice of total log-decay A [B, H], add s."""
    if log_decay is None:
        return x + s
    return torch.addcmul(s, torch.exp(log_decay)[..., None, None], x)
