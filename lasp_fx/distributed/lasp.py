"""Sequence-parallel linear attention (LASP): each rank runs its slice, only d x e states cross ranks.

Registered ops (opaque to dynamo, AOTAutograd and Inductor; the communication is inside them,
the group travels as its name, and every output is consumed: STACK.md section 3):
    torch.ops.lasp_fx.sp_linear_attention(q, k, v, log_decay?, initial_state?, scale, group_name, method, check,
        timeout, runs?)
        -> (o, final_state, state_in, saved_states)
    torch.ops.lasp_fx.sp_linear_attention_backward(do, d_final_state?, q, k, v, log_decay?, state_in,
        saved_states?, final_state?, scale, group_name, method, decay_grad, timeout, runs?)
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

Packed documents (`runs`, this rank's slice of ops/documents.py's index): the kernels reset
at every document start inside the slice, and the state a rank passes on is its last
document's. Across ranks only the slice's total log-decay A_r changes: -inf where a document
starts in the slice (at its first token included), 0 without a decay. The exchanges only add
log-decays and take exp() of the sums (never differences), so exp(-inf) = 0 stops the states
and gradients of earlier (later) ranks there, exactly: X_r = S_r, and M_r = the gradient through
the slice's first document. The decay's gradient needs nothing more: the tail <ds_out, X_r> is
zero unless the last document goes on, and every document's dG sums to zero (ops/chunked.py).
"""

# No `from __future__ import annotations`: torch.library reads the annotations to infer schemas.
from typing import Optional

import torch
from torch import Tensor

from lasp_fx.distributed import allgather, header, peer, ring
from lasp_fx.distributed.cost import METHODS, resolve_method
from lasp_fx.distributed.group import resolve_group
from lasp_fx.distributed.meta import check_same_inputs
from lasp_fx.distributed.combine import wait_all
from lasp_fx.distributed.link import DEFAULT_TIMEOUT, Link, checks_on_host
from lasp_fx.ops import chunked, documents
from lasp_fx.ops.op import kernels_for, runs_eagerly, saved_states_like, single_device

_EXCHANGES = {"ring": ring, "allgather": allgather}


def _method(method: str, group, q: Tensor, v: Tensor) -> str:
    B, _, H, D = q.shape
    state_dtype = chunked.acc_dtype(q.dtype)
    state_bytes = B * H * D * v.shape[-1] * torch.finfo(state_dtype).bits // 8
    through_peers = method == "auto" and peer.usable(group, q.device, state_dtype)  # only auto weighs it
    return resolve_method(method, group.size(), state_bytes, q.device.type, through_peers)


def _slice_decay(log_decay: Optional[Tensor], q: Tensor, runs: Optional[Tensor] = None) -> Optional[Tensor]:
    """A: the total log-decay of this rank's slice, [B, H] (None without decay or documents; -inf
    where a document starts in the slice: the module docstring).

    A sum, not the last row of a cumsum: on CUDA, torch.cumsum along T of a [B, T, H] tensor runs
    one thread per (batch, head) serially over T (pytorch/pytorch#122170), ~5 ms at T = 32K, H = 16
    on an H200 (bench/records/2026-11-28_sp/NOTES.md); a reduction takes microseconds.
    """
    B, T, H, _ = q.shape
    dtype = chunked.acc_dtype(q.dtype)
    if log_decay is None:
        A = None if runs is None else torch.zeros((), dtype=dtype, device=q.device).expand(B, H)
    else:
        g = log_decay.to(dtype)
        A = (g * T).expand(B, H) if g.dim() == 1 else g.sum(1)
    if runs is None:
        return A
    return torch.where(documents.survives(runs)[:, None], A, float("-inf"))


def _link(q, k, v, log_decay, scale, group, method, timeout, direction, runs=None) -> Link:
    B, _, H, D = q.shape
    head = header.make(q, k, v, log_decay, scale, method, direction, group.rank(), documents=runs is not None)
    return Link(group, head, timeout, (B, H, D, v.shape[-1]), chunked.acc_dtype(q.dtype), q.device,
                log_decay is not None or runs is not None, checks_on_host(q.device))


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
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    method = _method(method, group, q, v)
    link = _link(q, k, v, log_decay, scale, group, method, timeout, "forward", runs)
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
    # Incoming gradients may be expanded or strided (y.sum().backward() gives stride 0).
    do = do.contiguous()
    d_final = None if d_final_state is None else d_final_state.contiguous()
    method = _method(method, group, q, v)
    link = _link(q, k, v, log_decay, scale, group, method, timeout, "backward", runs)
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
    # contiguous: the fake promises empty_like(log_decay), and a per-token gradient scanned along T may not be
    dlog_decay = q.new_empty(0) if dG is None else kern.log_decay_grad(dG, log_decay).contiguous()
    return dq, dk, dv, dlog_decay, ds_in


@torch.library.custom_op("lasp_fx::sp_linear_attention", mutates_args=())
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


@_sp_forward.register_fake
def _(q, k, v, log_decay, initial_state, scale, group_name, method, check, timeout, runs=None):
    B, T, H, D = q.shape
    E = v.shape[-1]
    state = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return q.new_empty(B, T, H, E), state, torch.empty_like(state), saved_states_like(q, k, v, log_decay)


@torch.library.custom_op("lasp_fx::sp_linear_attention_backward", mutates_args=())
def _sp_backward(
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
    runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    group = resolve_group(group_name)
    return _gradients(
        do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group, method, decay_grad,
        timeout, runs,
    )


@_sp_backward.register_fake
def _(do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, scale, group_name, method,
      decay_grad, timeout, runs=None):
    dlog_decay = torch.empty_like(log_decay) if log_decay is not None and decay_grad else q.new_empty(0)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dlog_decay, torch.empty_like(state_in)


def _setup_context(ctx, inputs, output):
    q, k, v, log_decay, initial_state, scale, group, method, check, timeout, *rest = inputs
    runs = rest[0] if rest else None
    _, final_state, state_in, saved_states = output
    ctx.save_for_backward(q, k, v, log_decay, state_in, saved_states, final_state, runs)
    ctx.has_initial_state = initial_state is not None
    ctx.scale, ctx.group, ctx.method, ctx.timeout = scale, group, method, timeout
    ctx.set_materialize_grads(False)  # unused state gradients stay None: no zeros to make, send and add


def _backward(ctx, do, d_final_state, *_d_unused, gradients=torch.ops.lasp_fx.sp_linear_attention_backward):
    q, k, v, log_decay, state_in, saved_states, final_state, runs = ctx.saved_tensors
    if do is None:  # only the final state was used
        do = q.new_zeros(*q.shape[:3], v.shape[-1])
    decay_grad = log_decay is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dlog_decay, d_state_in = gradients(
        do, d_final_state, q, k, v, log_decay, state_in, saved_states, final_state, ctx.scale, ctx.group,
        ctx.method, decay_grad, ctx.timeout, runs,
    )  # fmt: skip
    d_initial = None
    if ctx.has_initial_state:  # read on rank 0 only: the other ranks' copies get zeros
        d_initial = d_state_in if resolve_group(ctx.group).rank() == 0 else torch.zeros_like(d_state_in)
    grads = (dq, dk, dv, dlog_decay if decay_grad else None, d_initial)
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))  # scale, group, method, check, timeout[, runs]


_sp_forward.register_autograd(_backward, setup_context=_setup_context)
_traced_op = torch.ops.lasp_fx.sp_linear_attention


class _EagerLASP(torch.autograd.Function):
    """The same op for plain tensors outside any tracing (ops.op.runs_eagerly), without torch.library
    around it; the group travels as itself, and X_{r-1} stays None on rank 0 without an initial state."""

    @staticmethod
    def forward(ctx, q, k, v, log_decay, initial_state, scale, group, method, check, timeout, runs):
        inputs = (q, k, v, log_decay, initial_state, scale, group, method, check, timeout, runs)
        outputs = _forward(*inputs)
        _setup_context(ctx, inputs, outputs)
        return outputs[:2]

    @staticmethod
    def backward(ctx, do, d_final_state):
        return _backward(ctx, do, d_final_state, gradients=_gradients)


def sequence_parallel_attention(q, k, v, log_decay, initial_state, scale: float, *, group, method: str = "auto",
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
            without it the header the states carry is still checked by each receiver (header.py).
        timeout: seconds a rank waits for a peer's state on a CPU group before ExchangeTimeoutError
            (on CUDA the process group's own timeout bounds NCCL's waits: link.py).
        cu_seqlens, document_ids: packed documents of the whole sequence (all ranks' tokens), the
            same on every rank, as `lasp_fx.linear_attention` takes them; each rank reads its slice.

    Returns:
        (o, final_state): this rank's output slice and the state after its slice (see module docstring).
        A group of one rank runs the single-device op itself.
    """
    if method not in ("auto", *METHODS):
        raise ValueError(f"method must be 'ring', 'allgather' or 'auto', got {method!r}")
    pg = resolve_group(group)
    B, T = q.shape[:2]
    runs = documents.slice_runs(cu_seqlens, document_ids, B, T, pg.rank(), pg.size(), device=q.device)
    if pg.size() == 1:
        return single_device(q, k, v, log_decay, initial_state, scale, runs)  # arguments already checked
    if runs_eagerly(q, k, v, log_decay, initial_state, runs):
        return _EagerLASP.apply(q, k, v, log_decay, initial_state, scale, pg, method, check, timeout, runs)
    extra = () if runs is None else (runs,)
    o, final_state, *_ = _traced_op(
        q, k, v, log_decay, initial_state, scale, pg.group_name, method, check, timeout, *extra
    )
    return o, final_state
