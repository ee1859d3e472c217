"""The d x e combination step both exchanges apply, and waiting for the sends they leave in flight.

The ring's links run on the compute stream, queued when the kernels ask for the late state (the
hook's callable, ops/chunked.py): in the forward right after the state pass (the output kernel
needs the state at once), in the backward after the dq kernel (which needs none), so a rank's
recv never holds up its own dq; the chain then runs after every rank's dq, exposed, less its
first hop (the last rank receives nothing and sends at once: ring.begin_backward). The
all-gather is issued where its result is needed, after the state pass (forward) and after dq
(backward): run alongside the kernels, NCCL's kernels took their SMs (allgather.py). A side
stream of our own cost ~0.37 ms of host work per call on an H200 (stream, events,
record_stream: bench/records/2026-11-28_fold/NOTES.md), more than the NCCL hop it would hide.
NCCL calls only make the compute stream wait, never the host; on CPU (gloo) they block, which
is all the order needs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def step(x: Tensor, log_decay, s: Tensor) -> Tensor:
    """exp(A) * x + s per batch and head: carry state x through a slice of total log-decay A [B, H], add s."""
    if log_decay is None:
        return x + s
    return torch.addcmul(s, torch.exp(log_decay)[..., None, None], x)


def wait_all(works: list, link) -> None:
    """Wait for sends once the call's own kernels are queued: keeps the sent buffers alive until they are out.

    `works` holds (work, peer, message) triples; the wait is bounded by the link's timeout (link.py).
    """
    for work, peer, _message in works:
        link.wait(work, peer)
    works.clear()
