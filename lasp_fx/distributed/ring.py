"""LASP-1 ring: the state walks the ranks by point-to-point send/recv, one d x e axpy per hop.

Forward: recv X_{r-1}, X_r = exp(A_r) X_{r-1} + S_r, send X_r; the backward runs the chain in
reverse on M_r = dL/dX_{r-1}. Every rank does its state pass before it waits, so the chain
carries only the combination step (docs/design.md §4).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lasp_fx.distributed import header
from lasp_fx.distributed.combine import step
from lasp_fx.distributed.link import Link
from lasp_fx.distributed.kernels.gathered import checked_step

# Every message is this rank's state followed by the call's header (distributed/header.py): the
# receiver checks it before using the state, so ranks that disagree raise instead of mixing states.


def _recv(link: Link, src: int) -> Tensor:
    """The raw message from `src`: its state [n] then its header [SIZE]."""
    # ProcessGroup.recv / send take group ranks and skip dist.irecv's Python checks (host time).
    buf = torch.empty(math.prod(link.state_shape) + header.SIZE, dtype=link.dtype, device=link.device)
    link.wait(link.group.recv([buf], src, 0), f"rank {src}")  # NCCL: the current stream waits, not the host
    return buf


def _carry(link: Link, msg: Tensor, src: int, own: Tensor, log_decay, d_final, seal: bool):
    """(late, end, the next message or None): late = the state in `msg` once its header checks out
    (+ d_final), end = exp(A) late + own. On CUDA one kernel, which also writes end into the next
    message with this rank's header (`seal`) and records a mismatch in the watch (distributed/watch.py);
    on the host the header is read and a mismatch raises."""
    if link.on_host:
        late = link.open(msg[None], [src])[0].view(link.state_shape)
        late = late if d_final is None else late + d_final
        return late, step(late, log_decay, own), None
    late, end = checked_step(msg, link.tail(), own, log_decay, d_final, seal=seal, checked=header.CHECKED.stop,
                             watch=link.record, src=src)
    if not seal:
        return late, end, None
    return late, end[: own.numel()].view(own.shape), end


def _send(link: Link, x: Tensor, dst: int, msg: Tensor | None = None) -> list:
    msg = link.seal([x]) if msg is None else msg
    link.sent = True
    return [(link.group.send([msg], dst, 0), f"rank {dst}", msg)]


def forward(s_loc: Tensor, log_decay, link: Link, sends: list):
    """Run this rank's link of the forward chain; returns (X_{r-1} or None on rank 0, X_r), the send in `sends`."""
    rank, P = link.group.rank(), link.group.size()
    s_in, s_out, msg = None, s_loc, None
    if rank > 0:
        s_in, s_out, msg = _carry(link, _recv(link, rank - 1), rank - 1, s_loc, log_decay, None, seal=rank < P - 1)
    if rank < P - 1:
        sends.extend(_send(link, s_out, rank + 1, msg))
    return s_in, s_out


def begin_backward(ds_loc: Tensor, log_decay, d_final, link: Link, sends: list):
    """Start this rank's backward link; returns the callable that gives (ds_out or None, M_r).

    The last rank receives nothing, so it sends at once (the send runs on NCCL's stream while
    this rank's dq kernel runs, and the next rank finds it there after its own dq). The others
    wait until the callable is called, after their dq kernel is queued: their recv would make
    the compute stream wait.
    """
    if link.group.rank() == link.group.size() - 1:
        done = backward(ds_loc, log_decay, d_final, link, sends)
        return lambda: done
    return lambda: backward(ds_loc, log_decay, d_final, link, sends)


def begin_forward(s_loc: Tensor, log_decay, link: Link, sends: list):
    """The forward link, deferred to the returned callable (LASP calls it at once: the ring folds
    X_{r-1} into the output kernel, since sending X_r after that kernel would lengthen the chain)."""
    return lambda: forward(s_loc, log_decay, link, sends)


def backward(ds_loc: Tensor, log_decay, d_final, link: Link, sends: list):
    """Run this rank's link of the backward chain; returns (ds_out or None, M_r = gradient of X_{r-1})."""
    rank, P = link.group.rank(), link.group.size()
    msg = None
    if rank < P - 1:
        ds_out, ds_in, msg = _carry(link, _recv(link, rank + 1), rank + 1, ds_loc, log_decay, d_final, seal=rank > 0)
    else:
        ds_out = d_final
        ds_in = ds_loc if ds_out is None else step(ds_out, log_decay, ds_loc)
    if rank > 0:
        sends.extend(_send(link, ds_in, rank - 1, msg))
    return ds_out, ds_in


def abandon(link: Link, failed) -> None:
    """Send the FAILED header `failed` to the rank that waits for this rank's message (module docstring of link.py)."""
    rank, P = link.group.rank(), link.group.size()
    dst = rank + 1 if link.header.direction == 0 else rank - 1
    if link.sent or not 0 <= dst < P:
        return
    msg = link.seal([torch.zeros(math.prod(link.state_shape), dtype=link.dtype, device=link.device)], status=failed)
    link.sent = True
    link.wait(link.group.send([msg], dst, 0), f"rank {dst}")
