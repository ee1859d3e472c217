"""Triton kernels for the op on CUDA: the two primitives of `chunked.py`, same signatures and semantics.

    fwd(q, k, v, g, scale, s_in=None, state_hook=None, save=False)
        -> (o, s_out[, saved states])
    bwd(q, k, v, g, scale, do, s_in=None, ds_out=None, state_hook=None, decay_grad=True, saved=None)
        -> (dq, dk, dv, dG, ds_in)

fwd and bwd run a state pass first (states.py; bwd only the reverse one when fwd(save=True) kept
the forward's states), call `state_hook`, then the output / gradient kernels; a late state the
hook hands back (LASP: the state from the ranks before, the gradient from the ranks after)
enters those kernels' segment states, so no pass over the tokens is added. Inputs fp16, bf16 or fp32 (accumulation and states in fp32); the CPU interpreter
(TRITON_INTERPRET=1) runs the same kernels for tests. Hopper trap: Triton 3.4-3.7.0 miscompiles
tl.trans of a dot result that feeds another dot on sm_90; no kernel here does that (backward.py
says how).
"""

from lasp_fx.ops.chunked import acc_dtype
from lasp_fx.ops.triton.backward import bwd
from lasp_fx.ops.triton.common import saved_shape
from lasp_fx.ops.triton.decay_grad import log_decay_grad
from lasp_fx.ops.triton.forward import fwd

__all__ = ["fwd", "bwd", "log_decay_grad", "acc_dtype", "saved_shape"]
