"""Triton kernels for the op on CUDA: the four primitives of `chunked.py`, same signatures and semantics.

    fwd(q, k, v, g, scale, s_in=None, state_hook=None)                 -> (o, s_out)
    fwd_correct(o, q, g, scale, s_in)                                   -> o'
    bwd(q, k, v, g, scale, do, s_in=None, ds_out=None, state_hook=None) -> (dq, dk, dv, dG, ds_in)
    bwd_correct(dk, dv, dG, k, v, g, ds_out, s_out)                     -> (dk', dv', dG')

fwd and bwd run a state pass first (states.py), call `state_hook`, then the output / gradient
kernels, so LASP can send a state while the rest of the local work runs. bwd_correct is
chunked's (PyTorch, float32; correct.py says why). Inputs fp16, bf16 or
fp32 (accumulation and states in fp32); the CPU interpreter (TRITON_INTERPRET=1) runs the same
kernels for tests. Hopper trap: Triton 3.4-3.7.0 miscompiles tl.trans of a dot result that
feeds another dot on sm_90; no kernel here does that (backward.py says how).
"""

from lasp_fx.ops.chunked import acc_dtype, bwd_correct, log_decay_grad, slice_cumdecay
from lasp_fx.ops.triton.backward import bwd
from lasp_fx.ops.triton.correct import fwd_correct
from lasp_fx.ops.triton.forward import fwd

__all__ = ["fwd", "fwd_correct", "bwd", "bwd_correct", "log_decay_grad", "acc_dtype", "slice_cumdecay"]
