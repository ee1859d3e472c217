"""The d x e combination step both exchanges apply, and waiting for the sends they leave in flight.

The exchanges run on the compute stream's order, queued when the kernels ask for the late state
(forward: after the state pass; backward: after dq), never on a side stream of their own, whose
host work cost more than the hop it would hide (docs/design.md §4).
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
