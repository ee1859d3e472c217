"""LASP-2 style: one all-gather of every rank's (local state, total log-decay), then a local decayed sum.

One exchange per direction whatever P is, its weights sums of log-decays (never differences of
long cumulative sums, which lose precision in float32); through peer memory where the group
allows it (peer.py), else NCCL's all-gather and one combination kernel on CUDA
(kernels/gathered.py), PyTorch ops on gloo. It runs where its result is needed: alongside the
kernels NCCL's kernels took their SMs (docs/design.md §4).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from lasp_fx.distributed.combine import step
from lasp_fx.distributed.link import Link
from lasp_fx.distributed import header, peer
from lasp_fx.distributed.kernels.gathered import combine_gathered


# torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single; 2.11 has only the former.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def gather_rows(msg: Tensor, group, async_op: bool = False):
    """[P, n]: row j is rank j's 1-D `msg` (one all-gather); with async_op, a callable that waits and gives it."""
    out = msg.new_empty(group.size() * msg.numel())  # flat: gloo takes no [P, n] output
    work = _all_gather_single(out, msg, group=group, async_op=async_op)
    rows = out.view(group.size(), msg.numel())
    if not async_op:
        return rows

    def wait() -> Tensor:
        work.wait()  # NCCL: the current stream waits for the collective, the host does not
        return rows

    return wait


def _gather(link: Link, x: Tensor, log_decay) -> Callable[[], Tensor]:
    """Start one all-gather of every rank's x, log-decay and header; returns the wait giving the checked
    rows [P, n] (their payloads: the headers are checked by `link.open`, distributed/header.py)."""
    parts = [x] if log_decay is None else [x, log_decay]
    msg = link.seal(parts)
    P = link.group.size()
    out = msg.new_empty(P * msg.numel())  # flat: gloo takes no [P, n] output
    work = _all_gather_single(out, msg, group=link.group, async_op=True)
    link.sent = True

    def wait() -> Tensor:
        link.wait(work, "all ranks")  # NCCL: the current stream waits, the host does not
        rows = out.view(P, msg.numel())
        # on CUDA the combination kernel checks the headers (distributed/kernels/gathered.py): rows as gathered
        return link.open(rows, list(range(P))) if link.on_host else rows

    return wait


def _checks(link: Link) -> tuple:
    """(own header, how many of its values must agree, where a mismatch is recorded): what combine_gathered
    checks every row's header against (distributed/watch.py)."""
    return link.tail(), header.CHECKED.stop, link.record


def abandon(link: Link, failed) -> None:
    """Join the all-gather with the FAILED header `failed` in place of this rank's row (link.py)."""
    if link.sent:
        return
    n = math.prod(link.state_shape) + (link.state_shape[0] * link.state_shape[1] if link.has_decay else 0)
    msg = link.seal([torch.zeros(n, dtype=link.dtype, device=link.device)], status=failed)
    link.sent = True
    out = msg.new_empty(link.group.size() * msg.numel())
    link.wait(_all_gather_single(out, msg, group=link.group, async_op=True), "all ranks")


def _split(rows: Tensor, x: Tensor, log_decay) -> tuple:
    """([P, *x.shape] states, [P, B, H] log-decays or None) as views of the gathered rows."""
    xs = rows[:, : x.numel()].view(rows.shape[0], *x.shape)
    decays = None if log_decay is None else rows[:, x.numel():].view(rows.shape[0], *log_decay.shape)
    return xs, decays


@functools.lru_cache(maxsize=256)
def _paths(P: int, rank: int, forward: bool, device: torch.device) -> Tensor:
    """[n, P] bool: row j marks the slices i the state from rank j crosses before `rank`'s slice.

    Forward (j < rank): j < i < rank; backward (j > rank): rank < i < j. A constant of (P, rank).
    """
    js = range(rank) if forward else range(rank + 1, P)
    rows = [[min(j, rank) < i < max(j, rank) for i in range(P)] for j in js]
    return torch.tensor(rows, dtype=torch.bool, device=device).reshape(len(js), P)


def _crossed(decays: Tensor, rank: int, forward: bool) -> Tensor:
    """log w_j: the total log-decay of the slices each gathered state crosses on its way, [n, B, H].

    Sums of the A_i themselves (selected, not multiplied, so a -inf stays a -inf), never differences.
    One select and one sum, where a flip / cumsum / flip / cat took five launches.
    """
    paths = _paths(decays.shape[0], rank, forward, decays.device)
    return torch.where(paths[:, :, None, None], decays, 0.0).sum(1)


def _weighted_sum(log_w, xs: Tensor) -> Tensor:
    """sum_j exp(log_w_j) xs_j over the leading dim; plain sum without decay.

    Elementwise, not an einsum: that lowers to a batched matmul, which runs in TF32 wherever a
    training script allows it for float32 matmuls, and would round the states the ring keeps exact.
    """
    if log_w is None:
        return xs.sum(0)
    return (torch.exp(log_w)[..., None, None] * xs).sum(0)


def begin_forward(s_loc: Tensor, log_decay, link: Link, sends: list) -> Callable[[], tuple]:
    """Start the exchange; returns the step that finishes it: (X_{r-1} or None on rank 0, X_r).

    `sends` stays empty (a collective). LASP calls the step at once (module docstring).
    """
    group, rank = link.group, link.group.rank()
    if link.peers:  # one kernel: push, wait, combine (distributed/peer.py)
        link.sent = True  # nothing to abandon: the peers wait in the kernel, whose spin bounds it
        def through_peers():
            late, end = peer.exchange(s_loc, log_decay, None, group, True, *_checks(link))
            return (None if rank == 0 else late), end

        return through_peers
    wait = _gather(link, s_loc, log_decay)

    def finish():
        rows = wait()
        if rank == 0:
            return None, s_loc
        if not link.on_host:  # one kernel (distributed/kernels/gathered.py) for the ~10 small ops below and the check
            return combine_gathered(rows, s_loc.shape, rank, True, log_decay is not None, None, *_checks(link))
        states, decays = _split(rows, s_loc, log_decay)
        log_w = None if decays is None else _crossed(decays, rank, forward=True)  # A_{j+1} + ... + A_{r-1}
        s_in = _weighted_sum(log_w, states[:rank])
        return s_in, step(s_in, log_decay, s_loc)

    return finish


def forward(s_loc: Tensor, log_decay, link: Link, sends: list):
    """Run the exchange at once; returns (X_{r-1} or None on rank 0, X_r)."""
    return begin_forward(s_loc, log_decay, link, sends)()


def begin_backward(ds_loc: Tensor, log_decay, d_final, link: Link, sends: list) -> Callable[[], tuple]:
    """The exchange, issued when the returned step is called (after LASP has queued dq: module
    docstring); the step gives (ds_out or None, M_r = gradient of X_{r-1})."""
    group, rank, P = link.group, link.group.rank(), link.group.size()
    link.sent = link.peers  # as in begin_forward
    n = ds_loc if d_final is None else step(d_final, log_decay, ds_loc)

    def finish():
        if link.peers:
            late, end = peer.exchange(n, log_decay, d_final, group, False, *_checks(link))
            return (d_final if rank == P - 1 else late), end
        rows = _gather(link, n, log_decay)()
        if rank == P - 1:
            return d_final, n
        if not link.on_host:
            return combine_gathered(rows, n.shape, rank, False, log_decay is not None, d_final, *_checks(link))
        grads, decays = _split(rows, n, log_decay)
        log_w = None if decays is None else _crossed(decays, rank, forward=False)  # A_{r+1} + ... + A_{j-1}
        m_next = _weighted_sum(log_w, grads[rank + 1 :])
        return (m_next if d_final is None else m_next + d_final), step(m_next, log_decay, n)

    return finish


def backward(ds_loc: Tensor, log_decay, d_final, link: Link, sends: list):
    """Run the exchange at once; returns (ds_out or None, M_r = gradient of X_{r-1})."""
    return begin_backward(ds_loc, log_decay, d_final, link, sends)()
