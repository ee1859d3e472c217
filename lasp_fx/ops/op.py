"""The single-device op: registered as a torch.library custom op with its own autograd.

Registered ops (opaque to dynamo, AOTAutograd and Inductor, so `torch.compile(fullgraph=True)`
and `torch.export` keep each call as one node):
    torch.ops.lasp_fx.linear_attention(q, k, v, log_decay?, initial_state?, scale)
        -> (o, final_state, saved_states)
    torch.ops.lasp_fx.linear_attention_backward(do, d_final_state?, q, k, v, log_decay?, initial_state?,
        saved_states?, final_state?, scale, decay_grad) -> (dq, dk, dv, dlog_decay, d_initial_state)
The backward's `decay_grad` is False when the decay needs no gradient (a fixed buffer): dlog_decay
is then empty and the kernels skip the work for it. `saved_states` are the forward's states that the backward
reuses instead of running their pass again (its shape follows from the sizes: `saved_shape` of
the kernels' module, empty on the PyTorch path). Eager calls on plain tensors run the same
functions through an autograd.Function twin instead (custom_op.py): less host time, same kernels.
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


def saved_states_like(q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor]) -> Tensor:
    """An empty tensor shaped as the forward's saved states for these inputs (what a fake returns)."""
    shape = kernels_for(q).saved_shape(q, v, log_decay, k.shape[2])
    return q.new_empty(shape, dtype=chunked.acc_dtype(q.dtype))


def _forward(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Optional[Tensor], initial_state: Optional[Tensor], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return kernels_for(q).fwd(q, k, v, log_decay, scale, initial_state, save=True)


def _forward_fake(q, k, v, log_decay, initial_state, scale):
    B, T, H, D = q.shape
    E = v.shape[-1]
    final_state = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return q.new_empty(B, T, H, E), final_state, saved_states_like(q, k, v, log_decay)


def _gradients(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    kern = kernels_for(q)
    saved = None if saved_states is None else (saved_states, final_state)
    dq, dk, dv, dG, ds_in = kern.bwd(
        q, k, v, log_decay, scale, do, initial_state, d_final_state, decay_grad=decay_grad, saved=saved
    )
    dlog_decay = q.new_empty(0) if dG is None else kern.log_decay_grad(dG, log_decay)
    return dq, dk, dv, dlog_decay, ds_in


def _gradients_fake(do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, scale,
                    decay_grad):
    B, _, H, D = q.shape
    E = v.shape[-1]
    dlog_decay = torch.empty_like(log_decay) if log_decay is not None and decay_grad else q.new_empty(0)
    ds_in = q.new_empty(B, H, D, E, dtype=chunked.acc_dtype(q.dtype))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dlog_decay, ds_in


def _setup_context(ctx, inputs, output):
    q, k, v, log_decay, initial_state, scale = inputs
    _, final_state, saved_states = output
    ctx.save_for_backward(q, k, v, log_decay, initial_state, saved_states, final_state)
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused final state's gradient stays None: no zeros to make and add


def _backward(ctx, do, d_final_state, *_d_saved, gradients):
    q, k, v, log_decay, initial_state, saved_states, final_state = ctx.saved_tensors
    if do is None:  # only the final state was used
        do = q.new_zeros(*q.shape[:3], v.shape[-1])
    decay_grad = log_decay is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dlog_decay, ds_in = gradients(
        do, d_final_state, q, k, v, log_decay, initial_state, saved_states, final_state, ctx.scale, decay_grad
    )
    return dq, dk, dv, dlog_decay if decay_grad else None, None if initial_state is None else ds_in, None


_op = TwinOp("linear_attention", forward=_forward, forward_fake=_forward_fake, gradients=_gradients,
             gradients_fake=_gradients_fake, setup_context=_setup_context, backward=_backward)


def single_device(q, k, v, log_decay, initial_state, scale: float):
    """(o, final_state) on already-checked arguments: the eager twin on plain tensors, the custom op when traced."""
    o, final_state, _ = _op(q, k, v, log_decay, initial_state, scale)
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
