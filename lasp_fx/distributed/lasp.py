"""Sequence-parallel linear attention (LASP): each rank runs its slice, only d x e states cross ranks.

Per rank the primitives of `kernels_for(q)` run their state pass, hand the local state to an
exchange (ring or all-gather) through their `state_hook`, and fold what comes back into the
output (forward) or the dk / dv kernels (backward), so LASP adds no pass over the tokens. The
ops `lasp_fx::sp_linear_attention(_backward)` carry the communication inside them (the group by
name), so compilers keep each call as one node; the rules for gradients, failures and what every
rank must pass are in docs/design.md §4.

Packed documents (`runs`, this rank's slice of ops/documents.py's index): the kernels reset at
every document start inside the slice, and the state a rank passes on is its last document's.
Across ranks only the slice's total log-decay A_r changes: -inf where a document starts in the
slice (at its first token included), 0 without a decay. The exchanges only add log-decays and
take exp() of the sums, never differences, so exp(-inf) = 0 stops the earlier (later) ranks'
states (gradients) there exactly. The decay's gradient needs nothing more: the tail <ds_out, X_r>
is zero unless the last document goes on, and every document's dG sums to zero (ops/chunked.py).
"""

# No `from __future__ import annotations`: torch.library reads the annotations to infer schemas.
from typing import Optional

import torch
from torch import Tensor

from lasp_fx.distributed import allgather, header, peer, ring, watch
from lasp_fx.config import DEFAULT_TIMEOUT, Method, choose
from lasp_fx.distributed.cost import resolve_method
from lasp_fx.distributed.group import resolve_group
from lasp_fx.distributed.meta import check_same_inputs
from lasp_fx.distributed.combine import wait_all
from lasp_fx.distributed.link import Link, checks_on_host
from lasp_fx.ops import chunked, documents
from lasp_fx.ops.custom_op import TwinOp
from lasp_fx.ops.op import backward_inputs, kernels_for, outputs_like, single_device

_EXCHANGES = {"ring": ring, "allgather": allgather}


def _method(method: str, group, q: Tensor, v: Tensor) -> tuple[str, bool]:
    """(the exchange, whether an all-gather would go through peer memory): peer.usable asked once per call."""
    B, _, H, D = q.shape
    state_dtype = chunked.acc_dtype(q.dtype)
    state_bytes = B * H * D * v.shape[-1] * torch.finfo(state_dtype).bits // 8
    through_peers = method != "ring" and peer.usable(group, q.device, state_dtype)
    return resolve_method(method, group.size(), state_bytes, q.device.type, through_peers), through_peers


def _slice_decay(log_decay: Optional[Tensor], q: Tensor, runs: Optional[Tensor] = None) -> Optional[Tensor]:
    """A: the total log-decay of this rank's slice, [B, H] (None without decay or documents; -inf
    where a document starts in the slice: the module docstring).

    A sum, not the last row of a cumsum: on CUDA, torch.cumsum along T of a [B, T, H] tensor runs
    one thread per (batch, head) serially over T (pytorch/pytorch#122170); a reduction does not.
    log_decay is already in the state dtype (linear_attention casts it once).
    """
    B, T, H, _ = q.shape
    if log_decay is None:
        A = None if runs is None else q.new_zeros((), dtype=chunked.acc_dtype(q.dtype)).expand(B, H)
    else:
        A = (log_decay * T).expand(B, H) if log_decay.dim() == 1 else log_decay.sum(1)
    if runs is None:
        return A
    return torch.where(documents.survives(runs)[:, None], A, float("-inf"))


def _link(q, k, v, log_decay, scale, group, method, timeout, direction, peers: bool = False, runs=None) -> Link:
    B, _, H, D = q.shape
    head = header.make(q, k, v, log_decay, scale, method, direction, group.rank(), documents=runs is not None)
    host = checks_on_host(q.device)
    return Link(group, head, timeout, (B, H, D, v.shape[-1]), chunked.acc_dtype(q.dtype), q.device,
                log_decay is not None or runs is not None, host, peers=peers,
                watch=None if host else watch.of(group, q.device))


def _guarded(link: Link, method: str, run):
    """run(), and when it raises before this rank's message has left, the peers get a FAILED header
    in its place (link.py), so they raise at once instead of waiting out the timeout."""
    try:
        return run()
    except Exception as error:
        if not link.sent:
            try:
                _EXCHANGES[method].abandon(link, link.failure(error))
            except Exception:  # noqa: BLE001 - the peer may be gone too; the first error is the one to raise
                pass
        raise


def _forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout, runs=None):
    """(o, X_r, X_{r-1}, saved states) on this rank; X_{r-1} is None on rank 0 when there is no initial state."""
    method, peers = _method(method, group, q, v)
    link = _link(q, k, v, log_decay, scale, group, method, timeout, "forward", peers, runs)
    if link.watch is not None:  # a mismatch an earlier call's kernels found raises here, on every rank alike
        link.watch.start(True, group)
    if check:
        check_same_inputs(link)
    kern, rank, A = kernels_for(q), group.rank(), _slice_decay(log_decay, q, runs)
    sends, got = [], []

    def start_exchange(s_loc):  # after the state pass: the all-gather is issued here
        finish = _EXCHANGES[method].begin_forward(s_loc, A, link, sends)

        def exchange():  # when fwd asks for the late state: at once, before the output kernel
            s_in, s_end = finish()
            got.append(s_in)
            return None if s_in is None else (s_in, s_end)  # (X_{r-1}, X_r): fwd takes X_r as is

        return exchange

    s0 = initial_state if rank == 0 else None
    o, s_out, saved = _guarded(
        link, method, lambda: kern.fwd(q, k, v, log_decay, scale, s0, state_hook=start_exchange, save=True, runs=runs)
    )
    wait_all(sends, link)
    return o, s_out, got[0] if rank > 0 else s0, saved


def _gradients(
    do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group, method, decay_grad,
    timeout, runs=None,
):  # fmt: skip
    """(dq, dk, dv, dlog_decay (empty without decay_grad), gradient of X_{r-1})."""
    # the kernels make `do` contiguous; d_final_state (stride 0 after final_state.sum().backward()) is sent
    d_final = None if d_final_state is None else d_final_state.contiguous()
    method, peers = _method(method, group, q, v)
    link = _link(q, k, v, log_decay, scale, group, method, timeout, "backward", peers, runs)
    kern, A = kernels_for(q), _slice_decay(log_decay, q, runs)
    sends = []

    def start_exchange(ds_loc):  # after the state passes: the last ring link starts here
        finish = _EXCHANGES[method].begin_backward(ds_loc, A, d_final, link, sends)

        def exchange():  # when bwd asks for the late gradient (after dq): (ds_out, M_r) or None
            ds_out, ds_in = finish()
            return None if ds_out is None else (ds_out, ds_in)

        return exchange

    saved = None if saved_states is None else (saved_states, final_state)
    dq, dk, dv, dG, ds_in = _guarded(link, method, lambda: kern.bwd(
        q, k, v, log_decay, scale, do, state_in, None, state_hook=start_exchange, decay_grad=decay_grad, saved=saved,
        runs=runs,
    ))
    wait_all(sends, link)
    if link.watch is not None:  # queue the copy of what this call's kernels found, for the next step
        link.watch.finish(False)
    # contiguous: the fake promises empty_like(log_decay), and a per-token gradient scanned along T may not be
    dlog_decay = q.new_empty(0) if dG is None else kern.log_decay_grad(dG, log_decay).contiguous()
    return dq, dk, dv, dlog_decay, ds_in


def _sp_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Optional[Tensor],
    initial_state: Optional[Tensor],
    scale: float,
    group_name: str,
    method: str,
    check: bool,
    timeout: float,
    runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    group = resolve_group(group_name)
    o, s_out, s_in, saved = _forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout, runs)
    if s_in is None:  # rank 0 without an initial state; returned, so a tensor (the same as no state)
        s_in = torch.zeros_like(s_out)
    elif s_in is initial_state:  # an output must not alias an input
        s_in = s_in.to(s_out.dtype).clone()
    return o, s_out, s_in, saved


def _sp_forward_fake(q, k, v, log_decay, initial_state, scale, group_name, method, check, timeout, runs=None):
    o, state, saved = outputs_like(q, k, v, log_decay)
    return o, state, torch.empty_like(state), saved


def _sp_gradients(
    do: Tensor, d_final_state: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor],
    state_in: Tensor, saved_states: Optional[Tensor], final_state: Optional[Tensor], scale: float, group_name: str,
    method: str, decay_grad: bool, timeout: float, runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    group = resolve_group(group_name)
    return _gradients(
        do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group, method, decay_grad,
        timeout, runs,
    )


def _sp_gradients_fake(do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group_name,
                       method, decay_grad, timeout, runs=None):
    dlog_decay = torch.empty_like(log_decay) if log_decay is not None and decay_grad else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dlog_decay, torch.empty_like(state_in)


def _setup_context(ctx, inputs, output):
    q, k, v, log_decay, initial_state, scale, group, method, check, timeout, *rest = inputs
    _, final_state, state_in, saved_states = output
    ctx.save_for_backward(q, k, v, log_decay, state_in, saved_states, final_state, rest[0] if rest else None)
    ctx.has_initial_state = initial_state is not None
    ctx.scale, ctx.group, ctx.method, ctx.timeout = scale, group, method, timeout
    ctx.set_materialize_grads(False)  # unused state gradients stay None: no zeros to make, send and add


def _backward(ctx, do, d_final_state, *_d_unused, gradients):
    (q, k, v, log_decay, state_in, saved_states, final_state, runs), do, decay_grad = backward_inputs(ctx, do)
    dq, dk, dv, dlog_decay, d_state_in = gradients(
        do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, ctx.scale, ctx.group,
        ctx.method, decay_grad, ctx.timeout, runs,
    )  # fmt: skip
    d_initial = None
    if ctx.has_initial_state:  # read on rank 0 only: the other ranks' copies get zeros
        d_initial = d_state_in if resolve_group(ctx.group).rank() == 0 else torch.zeros_like(d_state_in)
    grads = (dq, dk, dv, dlog_decay if decay_grad else None, d_initial)
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))  # scale, group, method, check, timeout[, runs]


def _eager_forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout, runs=None):
    """`_forward` for the eager twin: X_{r-1} stays None on rank 0 without an initial state (no zeros
    to make), and an initial state comes back as a view (autograd saves no input returned as it is)."""
    o, s_out, s_in, saved = _forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout, runs)
    if s_in is not None and s_in is initial_state:
        s_in = s_in.view_as(s_in)
    return o, s_out, s_in, saved


# The custom op takes the group's name; the eager twin takes the group itself.
_op = TwinOp("sp_linear_attention", forward=_sp_forward, forward_fake=_sp_forward_fake, gradients=_sp_gradients,
             gradients_fake=_sp_gradients_fake, setup_context=_setup_context, backward=_backward,
             eager_forward=_eager_forward, eager_gradients=_gradients)


def sequence_parallel_attention(q, k, v, log_decay, initial_state, scale: float, *, group, method: Method = "auto",
                                check: bool = True, timeout: float = DEFAULT_TIMEOUT, cu_seqlens=None,
                                document_ids=None):
    """LASP over `group` on already-checked arguments (what `lasp_fx.linear_attention(..., group=)` calls).

    Args:
        q, k, v, log_decay, initial_state, scale: as `lasp_fx.linear_attention` after its checks
            (log_decay and initial_state in the state dtype, scale a float); q/k/v and a per-token
            log_decay hold this rank's slice of the sequence.
        group: ProcessGroup, DeviceMesh (1-D, or its "sp" dimension) or group name.
        method: "ring" (P2P chain), "allgather" (one collective) or "auto" (cost.estimate decides).
        check: all-gather the call's header first and raise on every rank if they differ (meta.py);
            without it the header the states carry is still checked by each receiver (header.py;
            on CUDA raised at the latest at the next call's forward: watch.py).
        timeout: seconds a rank waits for a peer's state on a CPU group before ExchangeTimeoutError
            (on CUDA the process group's own timeout bounds NCCL's waits: link.py).
        cu_seqlens, document_ids: packed documents of the whole sequence (all ranks' tokens), the
            same on every rank, as `lasp_fx.linear_attention` takes them; each rank reads its slice.

    Returns:
        (o, final_state): this rank's output slice and the state after its slice (see module docstring).
        A group of one rank runs the single-device op itself.
    """
    choose("method", method, Method)
    pg = resolve_group(group)
    B, T = q.shape[:2]
    runs = documents.slice_runs(cu_seqlens, document_ids, B, T, pg.rank(), pg.size(), device=q.device)
    if pg.size() == 1:
        return single_device(q, k, v, log_decay, initial_state, scale, runs)  # arguments already checked
    args = (q, k, v, log_decay, initial_state, scale)
    options = (method, check, timeout) + (() if runs is None else (runs,))
    o, final_state, *_ = _op(*args, pg, *options, traced_inputs=(*args, pg.group_name, *options))
    return o, final_state
