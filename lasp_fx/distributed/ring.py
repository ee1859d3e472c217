"""LASP-1 ring: the state walks the ranks by point-to-point send/recv, one d x e axpy per hop.

Forward, rank r (X_r = state after rank r's slice, S_r = its local state, A_r its total log-decay):
    recv X_{r-1} from r-1;  X_r = exp(A_r) X_{r-1} + S_r;  send X_r to r+1.
Rank 0's local state already contains the initial state, so it only sends. Backward runs the
same chain in reverse on M_r = dL/dX_{r-1} (the gradient rank r sends back):
    recv M_{r+1} from r+1;  ds_out_r = d_final_r + M_{r+1};  M_r = ds_loc_r + exp(A_r) ds_out_r;  send M_r to r-1.
Every rank does its state pass before it waits, so the chain carries only the combination step:
(P - 1) x (latency + 1 axpy). In the backward it is queued after each rank's dq kernel, so it runs
exposed after them, less its first hop (combine.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lasp_fx.distributed.combine import step


def _recv_like(x: Tensor, src: int, group) -> Tensor:
    # ProcessGroup.recv / send take group ranks and skip dist.irecv's Python checks (~20 us a call).
    buf = torch.empty_like(x)
    group.recv([buf], src, 0).wait()  # NCCL: the current stream waits, not the host
    return buf


def _send(x: Tensor, dst: int, group) -> list:
    return [group.send([x], dst, 0)]


def forward(s_loc: Tensor, log_decay, group, sends: list):
    """Run this rank's link of the forward chain; returns (X_{r-1} or None on rank 0, X_r), the send in `sends`."""
    rank, P = group.rank(), group.size()
    s_in, s_out = None, s_loc
    if rank > 0:
        s_in = _recv_like(s_loc, rank - 1, group)
        s_out = step(s_in, log_decay, s_loc)
    if rank < P - 1:
        sends.extend(_send(s_out, rank + 1, group))
    return s_in, s_out


def begin_backward(ds_loc: Tensor, log_decay, d_final, group, sends: list):
    """Start this rank's backward link; returns the callable that gives (ds_out or None, M_r).

    The last rank receives nothing, so it sends at once (the send runs on NCCL's stream while
    this rank's dq kernel runs, and the next rank finds it there after its own dq). The others
    wait until the callable is called, after their dq kernel is queued: their recv would make
    the compute stream wait.
    """
    if group.rank() == group.size() - 1:
        link = backward(ds_loc, log_decay, d_final, group, sends)
        return lambda: link
    return lambda: backward(ds_loc, log_decay, d_final, group, sends)


def begin_forward(s_loc: Tensor, log_decay, group, sends: list):
    """The forward link, deferred to the returned callable (LASP calls it at once: the ring folds
    X_{r-1} into the output kernel, since sending X_r after that kernel would lengthen the chain)."""
    return lambda: forward(s_loc, log_decay, group, sends)


def backward(ds_loc: Tensor, log_decay, d_final, group, sends: list):
    """Run this rank's link of the backward chain; returns (ds_out or None, M_r = gradient of X_{r-1})."""
    rank, P = group.rank(), group.size()
    ds_out = d_final
    if rank < P - 1:
        m_next = _recv_like(ds_loc, rank + 1, group)
        ds_out = m_next if d_final is None else m_next + d_final
    ds_in = ds_loc if ds_out is None else step(ds_out, log_decay, ds_loc)
    if rank > 0:
        sends.extend(_send(ds_in, rank - 1, group))
    return ds_out, ds_in
