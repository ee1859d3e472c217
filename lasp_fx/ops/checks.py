"""Argument checks for the public op: every error names the argument, what was expected and what came."""

from __future__ import annotations

import torch
from torch import Tensor


def _shape(x: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in x.shape) + "]"


def _require_tensor(name: str, x, *, optional: bool = False) -> None:
    if x is None and optional:
        return
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_linear_attention_args(q, k, v, log_decay, scale, initial_state) -> None:
    """Raise TypeError / ValueError for anything `linear_attention` cannot take.

    Expected layout: q [B, T, H, D], k [B, T, H_kv, D], v [B, T, H_kv, E], H % H_kv == 0,
    log_decay None | [H] | [B, T, H], initial_state None | [B, H, D, E].
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        _require_tensor(name, x)
        if x.dim() != 4:
            raise ValueError(
                f"{name} must have 4 dimensions [B, T, heads, head_dim], got shape {_shape(x)}"
                " (batch first, sequence second, heads third)"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}; "
            "cast them to the same dtype"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    B, T, H, D = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q has {B}, k has {k.shape[0]}, v has {v.shape[0]}")
    if k.shape[1] != T or v.shape[1] != T:
        raise ValueError(f"sequence lengths differ: q has {T}, k has {k.shape[1]}, v has {v.shape[1]}")
    if T == 0:
        raise ValueError("the sequence length (dim 1 of q) must be at least 1, got 0")
    if k.shape[3] != D:
        raise ValueError(f"q and k must have the same head_dim, got q {D} and k {k.shape[3]}")
    Hk = k.shape[2]
    if v.shape[2] != Hk:
        raise ValueError(f"k and v must have the same number of heads, got k {Hk} and v {v.shape[2]}")
    if H % Hk != 0:
        raise ValueError(
            f"the number of query heads ({H}) must be a multiple of the number of kv heads ({Hk}) "
            "for grouped-query attention"
        )
    E = v.shape[3]
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")

    if log_decay is not None:
        _require_tensor("log_decay", log_decay)
        if log_decay.device != q.device:
            raise ValueError(f"log_decay must be on {q.device} like q, got {log_decay.device}")
        if tuple(log_decay.shape) not in ((H,), (B, T, H)):
            raise ValueError(
                f"log_decay must have shape [H] = [{H}] (one decay per head) or [B, T, H] = "
                f"[{B}, {T}, {H}] (one per token), got {_shape(log_decay)}"
            )
        _check_decay_values(log_decay)
    if initial_state is not None:
        _require_tensor("initial_state", initial_state)
        if initial_state.device != q.device:
            raise ValueError(f"initial_state must be on {q.device} like q, got {initial_state.device}")
        if tuple(initial_state.shape) != (B, H, D, E):
            raise ValueError(
                f"initial_state must have shape [B, H, D, E] = [{B}, {H}, {D}, {E}], "
                f"got {_shape(initial_state)}"
            )



def _check_decay_values(log_decay: Tensor) -> None:
    """Refuse a positive or NaN log-decay where looking costs no host sync: a CPU tensor, eagerly.

    On a GPU reading the values back would wait for the GPU on every call (the hot path of a
    training step), and under tracing there are no values: there the check is skipped, and the
    README says that values must be <= 0. (-inf is allowed: a state reset, ops/op.py.)
    """
    if log_decay.device.type != "cpu" or type(log_decay) is not Tensor or torch.compiler.is_compiling():
        return
    with torch.no_grad():
        bad = ~(log_decay <= 0)  # NaN compares false
        if not bool(bad.any()):
            return
        where = tuple(int(i) for i in bad.nonzero()[0])
        value = float(log_decay[where])
    raise ValueError(
        f"log_decay must be <= 0 (a decay factor exp(log_decay) in [0, 1]), got {value} at index {list(where)}; "
        "pass log(decay) of a decay in [0, 1], e.g. -softplus(x) or logsigmoid(x)"
    )
