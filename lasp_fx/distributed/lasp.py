"""Sequence-parallel linear attention (LASP): each rank runs its slice, only d x e states cross ranks.

Registered ops (opaque to dynamo, AOTAutograd and Inductor; the communication is inside them,
the group travels as its name, and every output is consumed: STACK.md section 3):
    torch.ops.lasp_fx.sp_linear_attention(q, k, v, log_decay?, initial_state?, scale, group_name, method, check,
        timeout)
        -> (o, final_state, state_in, saved_states)
    torch.ops.lasp_fx.sp_linear_attention_backward(do, d_final_state?, q, k, v, log_decay?, state_in,
        saved_states?, final_state?, scale, group_name, method, decay_grad, timeout)
        -> (dq, dk, dv, dlog_decay, d_state_in)
(saved_states: the forward's own states, which the backward reuses: ops/op.py.)
Eager calls on plain tensors run the same two functions (`_forward`, `_gradients`) through a
torch.autograd.Function instead (ops.op.runs_eagerly says why).

Per rank, with the primitives of `kernels_for(q)` (DESIGN.md section 2, ops/chunked.py):
    forward   fwd(state_hook -> exchange): state pass -> exchange (ring: recv X_{r-1}, send X_r;
              all-gather: gather every (S_j, A_j) and combine, in one kernel through peer
              memory where the group allows it) -> output kernel with X_{r-1} folded
              into its segment states
    backward  bwd(s_in = X_{r-1}, state_hook -> exchange): state passes -> dq kernel
              -> exchange (ds_out, and the gradient of X_{r-1} sent back or gathered) -> dk, dv
              kernels with ds_out folded in -> log_decay_grad
The late state enters the kernels' per-segment states (n_seg x D x E per head), so LASP adds no
pass over the tokens; what the exchange costs is the wait. Both exchanges run on the compute
stream's order (combine.py): the ring's backward links after dq, except the last rank's, which
only sends and does so at once; the all-gather where its result is needed (allgather.py says
why not alongside the kernels).
Rank 0 starts from the initial state directly and the last rank's ds_out is d_final: nothing to wait for.

Failures: every state message carries the call's header (header.py), checked where it is
received, so ranks that disagree raise (CPU groups) or get NaN (CUDA: checked inside the
combination kernels, no host sync) instead of mixing states; check=True first all-gathers the
headers (meta.py) so that every rank raises alike. Waits on CPU groups are bounded by `timeout`,
and a rank that fails before its message has left sends a FAILED header in its place (link.py).

Semantics, for rank r of P holding tokens [r*T, (r+1)*T) of one sequence:
    o            rank r's slice of the single-device output.
    final_state  X_r, the state after the last token of rank r's slice; on the last rank this is
                 the final state of the whole sequence. Its gradient flows back correctly on every rank.
    initial_state  the state before the first token of the sequence: read on rank 0 only. Other
                 ranks may pass None or the same tensor (e.g. a replicated parameter): it is ignored
                 there and gets a zero gradient, so the sum over ranks is the single-device gradient.
    gradients    dq, dk, dv and a per-token decay [B, T, H]: this rank's slice; a per-head decay [H]:
                 this rank's share (the sum over ranks is the single-device gradient, the rule of every
                 replicated parameter).
Every rank of the group must make the call (and run its backward) with the same shapes.
"""

# No `from __future__ import annotations`: torch.library reads the annotations to infer schemas.
from typing import Optional

import torch
from torch import Tensor

from lasp_fx.distributed import allgather, header, peer, ring
from lasp_fx.config import DEFAULT_TIMEOUT, Method, choose
from lasp_fx.distributed.cost import resolve_method
from lasp_fx.distributed.group import resolve_group
from lasp_fx.distributed.meta import check_same_inputs
from lasp_fx.distributed.combine import wait_all
from lasp_fx.distributed.link import Link, checks_on_host
from lasp_fx.ops import chunked
from lasp_fx.ops.custom_op import TwinOp
from lasp_fx.ops.op import kernels_for, saved_states_like, single_device

_EXCHANGES = {"ring": ring, "allgather": allgather}


def _method(method: str, group, q: Tensor, v: Tensor) -> tuple[str, bool]:
    """(the exchange, whether an all-gather would go through peer memory): peer.usable asked once per call."""
    B, _, H, D = q.shape
    state_dtype = chunked.acc_dtype(q.dtype)
    state_bytes = B * H * D * v.shape[-1] * torch.finfo(state_dtype).bits // 8
    through_peers = method != "ring" and peer.usable(group, q.device, state_dtype)
    return resolve_method(method, group.size(), state_bytes, q.device.type, through_peers), through_peers


def _slice_decay(log_decay: Optional[Tensor], q: Tensor) -> Optional[Tensor]:
    """A: the total log-decay of this rank's slice, [B, H] (None without decay).

    A sum, not the last row of a cumsum: on CUDA, torch.cumsum along T of a [B, T, H] tensor runs
    one thread per (batch, head) serially over T (pytorch/pytorch#122170); a reduction does not.
    log_decay is already in the state dtype (linear_attention casts it once).
    """
    if log_decay is None:
        return None
    B, T, H, _ = q.shape
    return (log_decay * T).expand(B, H) if log_decay.dim() == 1 else log_decay.sum(1)


def _link(q, k, v, log_decay, scale, group, method, peers, timeout, direction) -> Link:
    B, _, H, D = q.shape
    head = header.make(q, k, v, log_decay, scale, method, direction, group.rank())
    return Link(group, head, timeout, (B, H, D, v.shape[-1]), chunked.acc_dtype(q.dtype), q.device,
                log_decay is not None, checks_on_host(q.device), peers=peers)


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


def _forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout):
    """(o, X_r, X_{r-1}, saved states) on this rank; X_{r-1} is None on rank 0 when there is no initial state."""
    method, peers = _method(method, group, q, v)
    link = _link(q, k, v, log_decay, scale, group, method, peers, timeout, "forward")
    if check:
        check_same_inputs(link)
    kern, rank, A = kernels_for(q), group.rank(), _slice_decay(log_decay, q)
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
        link, method, lambda: kern.fwd(q, k, v, log_decay, scale, s0, state_hook=start_exchange, save=True)
    )
    wait_all(sends, link)
    return o, s_out, got[0] if rank > 0 else s0, saved


def _gradients(
    do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group, method, decay_grad,
    timeout,
):  # fmt: skip
    """(dq, dk, dv, dlog_decay (empty without decay_grad), gradient of X_{r-1})."""
    # the kernels make `do` contiguous; d_final_state (stride 0 after final_state.sum().backward()) is sent
    d_final = None if d_final_state is None else d_final_state.contiguous()
    method, peers = _method(method, group, q, v)
    link = _link(q, k, v, log_decay, scale, group, method, peers, timeout, "backward")
    kern, A = kernels_for(q), _slice_decay(log_decay, q)
    sends = []

    def start_exchange(ds_loc):  # after the state passes: the last ring link starts here
        finish = _EXCHANGES[method].begin_backward(ds_loc, A, d_final, link, sends)

        def exchange():  # when bwd asks for the late gradient (after dq): (ds_out, M_r) or None
            ds_out, ds_in = finish()
            return None if ds_out is None else (ds_out, ds_in)

        return exchange

    saved = None if saved_states is None else (saved_states, final_state)
    dq, dk, dv, dG, ds_in = _guarded(link, method, lambda: kern.bwd(
        q, k, v, log_decay, scale, do, state_in, None, state_hook=start_exchange, decay_grad=decay_grad, saved=saved
    ))
    wait_all(sends, link)
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    group = resolve_group(group_name)
    o, s_out, s_in, saved = _forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout)
    if s_in is None:  # rank 0 without an initial state; returned, so a tensor (the same as no state)
        s_in = torch.zeros_like(s_out)
    elif s_in is initial_state:  # an output must not alias an input
        s_in = s_in.to(s_out.dtype).clone()
    return o, s_out, s_in, saved


def _sp_forward_fake(q, k, v, log_decay, initial_state, scale, group_name, method, check, timeout):
    B, T, H, D = q.shape
    E = v.shape[-1]
    state = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return q.new_empty(B, T, H, E), state, torch.empty_like(state), saved_states_like(q, k, v, log_decay)


def _sp_gradients(
    do: Tensor,
    d_final_state: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Optional[Tensor],
    state_in: Tensor,
    saved_states: Optional[Tensor],
    final_state: Optional[Tensor],
    scale: float,
    group_name: str,
    method: str,
    decay_grad: bool,
    timeout: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    group = resolve_group(group_name)
    return _gradients(
        do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group, method, decay_grad,
        timeout,
    )


def _sp_gradients_fake(do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group_name,
                       method, decay_grad, timeout):
    dlog_decay = torch.empty_like(log_decay) if log_decay is not None and decay_grad else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dlog_decay, torch.empty_like(state_in)


def _setup_context(ctx, inputs, output):
    q, k, v, log_decay, initial_state, scale, group, method, check, timeout = inputs
    _, final_state, state_in, saved_states = output
    ctx.save_for_backward(q, k, v, log_decay, state_in, saved_states, final_state)
    ctx.has_initial_state = initial_state is not None
    ctx.scale, ctx.group, ctx.method, ctx.timeout = scale, group, method, timeout
    ctx.set_materialize_grads(False)  # unused state gradients stay None: no zeros to make, send and add


def _backward(ctx, do, d_final_state, *_d_unused, gradients):
    q, k, v, log_decay, state_in, saved_states, final_state = ctx.saved_tensors
    if do is None:  # only the final state was used
        do = q.new_zeros(*q.shape[:3], v.shape[-1])
    decay_grad = log_decay is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dlog_decay, d_state_in = gradients(
        do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, ctx.scale, ctx.group,
        ctx.method, decay_grad, ctx.timeout,
    )  # fmt: skip
    d_initial = None
    if ctx.has_initial_state:  # read on rank 0 only: the other ranks' copies get zeros
        d_initial = d_state_in if resolve_group(ctx.group).rank() == 0 else torch.zeros_like(d_state_in)
    return dq, dk, dv, dlog_decay if decay_grad else None, d_initial, None, None, None, None, None


def _eager_forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout):
    """`_forward` for the eager twin: X_{r-1} stays None on rank 0 without an initial state (no zeros
    to make), and an initial state comes back as a view (autograd saves no input returned as it is)."""
    o, s_out, s_in, saved = _forward(q, k, v, log_decay, initial_state, scale, group, method, check, timeout)
    if s_in is not None and s_in is initial_state:
        s_in = s_in.view_as(s_in)
    return o, s_out, s_in, saved


# The custom op takes the group's name; the eager twin takes the group itself.
_op = TwinOp("sp_linear_attention", forward=_sp_forward, forward_fake=_sp_forward_fake, gradients=_sp_gradients,
             gradients_fake=_sp_gradients_fake, setup_context=_setup_context, backward=_backward,
             eager_forward=_eager_forward, eager_gradients=_gradients)


def sequence_parallel_attention(q, k, v, log_decay, initial_state, scale: float, *, group, method: Method = "auto",
                                check: bool = True, timeout: float = DEFAULT_TIMEOUT):
    """LASP over `group` on already-checked arguments (what `lasp_fx.linear_attention(..., group=)` calls).

    Args:
        q, k, v, log_decay, initial_state, scale: as `lasp_fx.linear_attention` after its checks
            (log_decay and initial_state in the state dtype, scale a float); q/k/v and a per-token
            log_decay hold this rank's slice of the sequence.
        group: ProcessGroup, DeviceMesh (1-D, or its "sp" dimension) or group name.
        method: "ring" (P2P chain), "allgather" (one collective) or "auto" (cost.estimate decides).
        check: all-gather the call's header first and raise on every rank if they differ (meta.py);
            without it the header the states carry is still checked by each receiver (header.py).
        timeout: seconds a rank waits for a peer's state on a CPU group before ExchangeTimeoutError
            (on CUDA the process group's own timeout bounds NCCL's waits: link.py).

    Returns:
        (o, final_state): this rank's output slice and the state after its slice (see module docstring).
        A group of one rank runs the single-device op itself.
    """
    choose("method", method, Method)
    pg = resolve_group(group)
    if pg.size() == 1:
        return single_device(q, k, v, log_decay, initial_state, scale)  # arguments already checked
    args, options = (q, k, v, log_decay, initial_state, scale), (method, check, timeout)
    o, final_state, *_ = _op(*args, pg, *options, traced_inputs=(*args, pg.group_name, *options))
    return o, final_state
