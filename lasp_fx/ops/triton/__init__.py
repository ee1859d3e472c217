"""Triton kernels for the op on CUDA: the two primitives of `chunked.py`, same signatures and semantics.

fwd and bwd run a state pass (states.py), call `state_hook`, then the output / gradient kernels,
into whose segment states a late state enters; inputs fp16, bf16 or fp32, accumulation and
states in fp32. No kernel applies tl.trans to a dot result that feeds another dot, which
Triton 3.4-3.7.0 miscompiles on Hopper (docs/design.md §2).
"""

from lasp_fx.ops.chunked import acc_dtype
from lasp_fx.ops.triton.backward import bwd
from lasp_fx.ops.triton.common import saved_shape
from lasp_fx.ops.triton.decay_grad import log_decay_grad
from lasp_fx.ops.triton.forward import fwd

__all__ = ["fwd", "bwd", "log_decay_grad", "acc_dtype", "saved_shape"]
