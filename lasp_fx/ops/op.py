"""The single-device op: `lasp_fx::linear_attention` and its backward op, with the eager twin (custom_op.py).

The backward's `decay_grad` is False when the decay needs no gradient (a fixed buffer), and the
kernels then skip that work; `saved_states` are the forward's segment states that the backward
reuses instead of running their pass again (empty on the PyTorch path). `runs` [B, T + 1] int32
(last, optional): packed documents, the index ops/documents.py builds from cu_seqlens or document ids.
"""

# No `from __future__ import annotations`: torch.library reads the annotations to infer schemas.
from types import ModuleType
from typing import Optional

import torch
from torch import Tensor

from lasp_fx.ops import chunked
from lasp_fx.ops.custom_op import TwinOp


def kernels_for(x: Tensor) -> ModuleType:
    """The module implementing the primitives fwd / bwd (chunked.py says what they do) for tensors like `x`."""
    # Triton kernels for CUDA fp16 / bf16 / fp32; float64 and CPU stay chunked. Imported here: a
    # machine without Triton (it ships for Linux only) never reaches it, having no CUDA tensors.
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32):
        from lasp_fx.ops import triton as triton_kernels

        return triton_kernels
    return chunked


def outputs_like(q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Empty (o, final state, saved states) shaped as the forward's outputs for these inputs (what a fake returns)."""
    B, T, H, D = q.shape
    E, state_dtype = v.shape[-1], chunked.acc_dtype(q.dtype)
    saved = q.new_empty(kernels_for(q).saved_shape(q, v, log_decay, k.shape[2]), dtype=state_dtype)
    return q.new_empty(B, T, H, E), q.new_empty(B, H, D, E, dtype=state_dtype), saved


def _forward(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor], initial_state: Optional[Tensor], scale: float,
    runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    return kernels_for(q).fwd(q, k, v, log_decay, scale, initial_state, save=True, runs=runs)


def _forward_fake(q, k, v, log_decay, initial_state, scale, runs=None):
    return outputs_like(q, k, v, log_decay)


def _gradients(
    do: Tensor, d_final_state: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor],
    initial_state: Optional[Tensor], saved_states: Optional[Tensor], final_state: Optional[Tensor], scale: float,
    decay_grad: bool, runs: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    kern = kernels_for(q)
    saved = None if saved_states is None else (saved_states, final_state)
    dq, dk, dv, dG, ds_in = kern.bwd(
        q, k, v, log_decay, scale, do, initial_state, d_final_state, decay_grad=decay_grad, saved=saved, runs=runs
    )
    dlog_decay = q.new_empty(0) if dG is None else kern.log_decay_grad(dG, log_decay)
    return dq, dk, dv, dlog_decay, ds_in


def _gradients_fake(do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, scale,
                    decay_grad, runs=None):
    B, _, H, D = q.shape
    E = v.shape[-1]
    dlog_decay = torch.empty_like(log_decay) if log_decay is not None and decay_grad else q.new_empty(0)
    ds_in = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dlog_decay, ds_in


def _setup_context(ctx, inputs, output):
    q, k, v, log_decay, initial_state, scale, *rest = inputs
    _, final_state, saved_states = output
    ctx.save_for_backward(q, k, v, log_decay, initial_state, saved_states, final_state, rest[0] if rest else None)
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused final state's gradient stays None: no zeros to make and add


def backward_inputs(ctx, do) -> tuple[tuple, Tensor, bool]:
    """(q, k, v, log_decay, state in, saved states, final state, runs) as saved, `do` (zeros when only the
    final state was used) and whether log_decay needs its gradient: what both ops' backwards start from."""
    saved = ctx.saved_tensors
    q, v, log_decay = saved[0], saved[2], saved[3]
    if do is None:
        do = q.new_zeros(*q.shape[:3], v.shape[-1])
    return saved, do, log_decay is not None and ctx.needs_input_grad[3]


def _backward(ctx, do, d_final_state, *_d_saved, gradients):
    (q, k, v, log_decay, initial_state, saved_states, final_state, runs), do, decay_grad = backward_inputs(ctx, do)
    dq, dk, dv, dlog_decay, ds_in = gradients(
        do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, ctx.scale, decay_grad, runs
    )
    grads = (dq, dk, dv, dlog_decay if decay_grad else None, None if initial_state is None else ds_in, None)
    return grads + (None,) * (len(ctx.needs_input_grad) - len(grads))  # and None for runs


_op = TwinOp("linear_attention", forward=_forward, forward_fake=_forward_fake, gradients=_gradients,
             gradients_fake=_gradients_fake, setup_context=_setup_context, backward=_backward)


def single_device(q, k, v, log_decay, initial_state, scale: float, runs=None):
    """(o, final_state) on already-checked arguments: the eager twin on plain tensors, the custom op when traced."""
    o, final_state, _ = _op(q, k, v, log_decay, initial_state, scale, *(() if runs is None else (runs,)))
    return o, final_state


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
