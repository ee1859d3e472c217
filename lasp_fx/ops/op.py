"""`linear_attention`: the public op, registered as a torch.library custom op with its own autograd.

Registered ops (opaque to dynamo, AOTAutograd and Inductor, so `torch.compile(fullgraph=True)`
and `torch.export` keep each call as one node):
    torch.ops.lasp_fx.linear_attention(q, k, v, log_decay?, initial_state?, scale, runs?)
        -> (o, final_state, saved_states)
    torch.ops.lasp_fx.linear_attention_backward(do, d_final_state?, q, k, v, log_decay?, initial_state?,
        saved_states?, final_state?, scale, decay_grad, runs?) -> (dq, dk, dv, dlog_decay, d_initial_state)
The backward's `decay_grad` is False when the decay needs no gradient (a fixed buffer): dlog_decay
is then empty and the kernels skip the work for it. `saved_states` are the forward's states that the backward
reuses instead of running their pass again (its shape follows from the sizes: `saved_shape` of
the kernels' module, empty on the PyTorch path). `runs` [B, T + 1] int32: packed documents, the
index ops/documents.py builds from cu_seqlens or document ids. Eager calls on plain tensors run the same
functions through a torch.autograd.Function instead (`runs_eagerly`): less host time, same kernels.
"""

# No `from __future__ import annotations`: torch.library reads the annotations to infer schemas.
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from lasp_fx.ops import chunked, documents
from lasp_fx.ops.checks import check_linear_attention_args


def kernels_for(x: Tensor) -> ModuleType:
    """The module implementing the primitives fwd / bwd (chunked.py says what they do) for tensors like `x`."""
    # Triton kernels for CUDA fp16 / bf16 / fp32 when Triton imports; float64 and CPU stay chunked.
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32):
        try:
            from lasp_fx.ops import triton as triton_kernels
        except ImportError:
            return chunked
        return triton_kernels
    return chunked


def _forward(q, k, v, log_decay, initial_state, scale, runs=None):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return kernels_for(q).fwd(q, k, v, log_decay, scale, initial_state, save=True, runs=runs)


def _gradients(do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, scale, decay_grad,
               runs=None):
    # Incoming gradients may be expanded or strided (y.sum().backward() gives stride 0).
    do = do.contiguous()
    d_final_state = None if d_final_state is None else d_final_state.contiguous()
    kern = kernels_for(q)
    saved = None if saved_states is None else (saved_states, final_state)
    dq, dk, dv, dG, ds_in = kern.bwd(
        q, k, v, log_decay, scale, do, initial_state, d_final_state, decay_grad=decay_grad, saved=saved, runs=runs
    )
    dlog_decay = q.new_empty(0) if dG is None else kern.log_decay_grad(dG, log_decay)
    return dq, dk, dv, dlog_decay, ds_in


def saved_states_like(q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor]) -> Tensor:
    """An empty tensor shaped as the forward's saved states for these inputs (what a fake returns)."""
    shape = kernels_for(q).saved_shape(q, v, log_decay, k.shape[2])
    return q.new_empty(shape, dtype=chunked.acc_dtype(q.dtype))


@torch.library.custom_op("lasp_fx::linear_attention", mutates_args=())
def _linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Optional[Tensor],
    initial_state: Optional[Tensor],
    scale: float,
    runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(q, k, v, log_decay, initial_state, scale, runs)


@_linear_attention.register_fake
def _(q, k, v, log_decay, initial_state, scale, runs=None):
    B, T, H, D = q.shape
    E = v.shape[-1]
    final_state = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return q.new_empty(B, T, H, E), final_state, saved_states_like(q, k, v, log_decay)


@torch.library.custom_op("lasp_fx::linear_attention_backward", mutates_args=())
def _linear_attention_backward(
    do: Tensor,
    d_final_state: Optional[Tensor],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Optional[Tensor],
    initial_state: Optional[Tensor],
    saved_states: Optional[Tensor],
    final_state: Optional[Tensor],
    scale: float,
    decay_grad: bool,
    runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _gradients(do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, scale,
                      decay_grad, runs)


@_linear_attention_backward.register_fake
def _(do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, scale, decay_grad,
      runs=None):
    B, _, H, D = q.shape
    E = v.shape[-1]
    dlog_decay = torch.empty_like(log_decay) if log_decay is not None and decay_grad else q.new_empty(0)
    ds_in = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dlog_decay, ds_in


def _setup_context(ctx, inputs, output):
    q, k, v, log_decay, initial_state, scale, *rest = inputs
    runs = rest[0] if rest else None
    _, final_state, saved_states = output
    ctx.save_for_backward(q, k, v, log_decay, initial_state, saved_states, final_state, runs)
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused final state's gradient stays None: no zeros to make and add


def _backward(ctx, do, d_final_state, _d_saved=None, gradients=torch.ops.lasp_fx.linear_attention_backward):
    q, k, v, log_decay, initial_state, saved_states, final_state, runs = ctx.saved_tensors
    if do is None:  # only the final state was used
        do = q.new_zeros(*q.shape[:3], v.shape[-1])
    decay_grad = log_decay is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dlog_decay, ds_in = gradients(
        do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, ctx.scale, decay_grad, runs
    )
    grads = (dq, dk, dv, dlog_decay if decay_grad else None, None if initial_state is None else ds_in, None)
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))  # and None for runs


_linear_attention.register_autograd(_backward, setup_context=_setup_context)
_traced_op = torch.ops.lasp_fx.linear_attention


class _EagerLinearAttention(torch.autograd.Function):
    """The same op for plain tensors outside any tracing, without torch.library's dispatch around it."""

    forward = staticmethod(_forward)
    setup_context = staticmethod(_setup_context)  # forward without ctx: torch.func.grad works too

    @staticmethod
    def backward(ctx, do, d_final_state, _d_saved):
        return _backward(ctx, do, d_final_state, gradients=_gradients)


def single_device(q, k, v, log_decay, initial_state, scale: float, runs=None):
    """(o, final_state) on already-checked arguments: the autograd.Function eagerly, the custom op when traced."""
    op = _EagerLinearAttention.apply if runs_eagerly(q, k, v, log_decay, initial_state, runs) else _traced_op
    o, final_state, _ = op(q, k, v, log_decay, initial_state, scale, *(() if runs is None else (runs,)))
    return o, final_state


def runs_eagerly(*tensors) -> bool:
    """Plain tensors, no compiler, export or dispatch mode tracing: the op may skip its custom-op wrapper.

    torch.library's dispatch and autograd wrapper around a Python custom op cost host time
    (an H200's host, bench/host.py: forward 0.34 ms against its kernels' 0.18 ms; fwd+bwd 1.30
    ms against 1.04 ms through an autograd.Function around the same kernels), and at 32K
    tokens the host's time per call is on the order of the GPU's. Anything traced keeps the
    custom op: one opaque node. (torch.func transforms see plain tensors and take the
    autograd.Function, which supports them through setup_context.)
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    # meta tensors take the custom op too: its fake implementation gives the shapes in O(1)
    return all(t is None or (type(t) is Tensor and not t.is_meta) for t in tensors)


# A log-decay of -inf (a gate that forgets everything: a state reset) becomes this finite value.
# Every kernel forms decays from differences of running sums, where -inf - -inf would be NaN; a
# finite value below the exponent range makes exp() of anything crossing it exactly 0, and only
# adds its own rounding to the running sums after it (float32: ~1e-5 relative in the decays of the
# tokens after the reset in the same chunk, what a strong gate of that size gives).
_FORGET_ALL = {torch.float32: -110.0, torch.float64: -800.0}  # exp(-110) and exp(-800) round to 0


def forget_all_as_finite(log_decay: Tensor) -> Tensor:
    """log_decay with -inf replaced by a finite value whose exp() is exactly 0 (its gradient is 0 there).

    One elementwise op, no host sync: a clamp from below, which leaves NaN as NaN.
    """
    return torch.clamp(log_decay, min=_FORGET_ALL[log_decay.dtype])


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Optional[Tensor] = None,
    *,
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    group=None,
    method: str = "auto",
    check: bool = True,
    timeout: float | None = None,
    cu_seqlens: Optional[Tensor] = None,
    document_ids: Optional[Tensor] = None,
):
    """Causal linear attention with optional decay, GQA, a carried state and packed documents.

    o_t = sum_{j<=t} exp(G_t - G_j) * scale * (q_t . k_j) * v_j, with G_t = sum_{i<=t} log_decay_i.

    Args:
        q: queries [B, T, H, D].
        k: keys [B, T, H_kv, D]; H % H_kv == 0 (each kv head serves H / H_kv query heads).
        v: values [B, T, H_kv, E].
        log_decay: None (no decay), [H] (one constant per head, e.g. RetNet's log(gamma)) or
            [B, T, H] (a data-dependent gate); values <= 0, where -inf forgets everything before
            (a state reset: the tokens before contribute exactly 0 after it, its gradient is 0).
            May require grad. On CPU tensors called eagerly a positive or NaN value is refused
            (ValueError); on a GPU the values are not read (that would be a host sync per call),
            so they are the caller's promise.
        scale: multiplies q . k; defaults to D ** -0.5 (pass 1.0 for models that do not scale).
        initial_state: [B, H, D, E] state carried in from earlier tokens.
        output_final_state: also return the state after the last token.
        group: sequence parallelism (LASP) over a ProcessGroup, a DeviceMesh (1-D, or its "sp"
            dimension) or a group name: rank r passes tokens [r*T, (r+1)*T) of one sequence and gets
            its slice of the single-device result; with a group, final_state is the state after this
            rank's slice and initial_state is read on rank 0 only (lasp_fx/distributed/lasp.py has
            the rules for gradients). A group of one rank is the single-device op.
        method: with a group, how states cross ranks: "ring", "allgather" or "auto"
            (lasp_fx.distributed.estimate says which and why).
        check: with a group, all-gather every rank's shapes, dtype, heads, decay form, scale and
            method first, so that a mismatch raises the same RankMismatchError on every rank
            (naming each rank's values) and the group stays usable. Without it (check=False) every
            state message still carries the same header and its receiver checks it: on CPU groups
            the receiving ranks raise (in the ring only those after the first rank that differs;
            the others fail at their next wait, within `timeout`); on CUDA the check runs on the
            device, without a host sync, and a mismatch turns the received states, hence this
            call's outputs and gradients, into NaN instead of raising. check=True costs one small
            all-gather per call, and on an NCCL-only group a host sync: `parallelize` checks its
            first call and relies on the headers after.
        timeout: with a group, seconds a rank waits for a peer's state on a CPU (gloo) group
            before it raises ExchangeTimeoutError naming the peer; a rank that fails inside the
            exchange tells its peers at once (RankFailedError "rank r failed: ..."). On CUDA the
            host never waits: NCCL's waits are bounded by the process group's timeout
            (init_process_group(timeout=...), 10 minutes by default), the peer-memory kernel's by
            its own spin (about as long). None: lasp_fx.distributed.link.DEFAULT_TIMEOUT (600 s, NCCL's default).
        cu_seqlens: packed documents in FlashAttention's varlen convention: int32 / int64 offsets
            [0, ..., total] of one packed row (B = 1), strictly increasing. With a group they are
            the offsets over the whole sequence (all ranks' tokens), the same tensor on every rank.
            Each document is computed as if run alone: nothing crosses a document start, and a
            document that crosses a rank edge continues there. initial_state flows into the first
            document; final_state is the last document's state (per-document states are not
            returned). Values are checked on CPU tensors (eagerly); on a GPU they are the
            caller's promise, as log_decay's.
        document_ids: the same as integer labels per token [B, T] (all ranks' tokens with a group,
            the same tensor on every rank): each maximal run of one label is one document (0 for
            padding by convention: a run of its own). Not with cu_seqlens.

    Returns:
        o [B, T, H, E] in q's dtype, or (o, final_state [B, H, D, E]) with
        `output_final_state=True`. States are float32 (float64 for float64 inputs).
    """
    check_linear_attention_args(q, k, v, log_decay, scale, initial_state)
    bad_timeout = isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    if group is not None and timeout is not None and bad_timeout:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    state_dtype = chunked.acc_dtype(q.dtype)
    if log_decay is not None:
        log_decay = forget_all_as_finite(log_decay.to(state_dtype))
    if initial_state is not None:
        initial_state = initial_state.to(state_dtype)
    if group is None:
        runs = documents.slice_runs(cu_seqlens, document_ids, q.shape[0], q.shape[1], device=q.device)
        o, final_state = single_device(q, k, v, log_decay, initial_state, scale, runs)
    else:  # imported here: lasp_fx.distributed builds on this module
        from lasp_fx.distributed.lasp import sequence_parallel_attention
        from lasp_fx.distributed.link import DEFAULT_TIMEOUT

        o, final_state = sequence_parallel_attention(
            q, k, v, log_decay, initial_state, scale, group=group, method=method, check=check,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout, cu_seqlens=cu_seqlens,
            document_ids=document_ids,
        )
    return (o, final_state) if output_final_state else o
