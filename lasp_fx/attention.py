"""`linear_attention`: the public op, on one device or across a group (LASP), on checked arguments."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from lasp_fx.config import DEFAULT_TIMEOUT, Method, check_timeout
from lasp_fx.distributed.lasp import sequence_parallel_attention
from lasp_fx.ops import chunked, documents
from lasp_fx.ops.checks import check_linear_attention_args
from lasp_fx.ops.op import forget_all_as_finite, single_device


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
    method: Method = "auto",
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
            device, without a host sync: a mismatch turns the received states, hence this call's
            outputs and gradients, into NaN, and the first forward after the next backward raises
            RankMismatchError on every rank (docs/design.md §4; with forward calls only, nothing
            raises). check=True costs one small all-gather per call, and on an NCCL-only group a
            host sync: `parallelize` checks its first call and relies on the headers after.
        timeout: with a group, seconds a rank waits for a peer's state on a CPU (gloo) group
            before it raises ExchangeTimeoutError naming the peer; a rank that fails inside the
            exchange tells its peers at once (RankFailedError "rank r failed: ..."). On CUDA the
            host never waits: NCCL's waits are bounded by the process group's timeout
            (init_process_group(timeout=...), 10 minutes by default), the peer-memory kernel's by
            its own spin (about as long). None: lasp_fx.config.DEFAULT_TIMEOUT (NCCL's default).
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
            padding by convention: a run of its own). Not with cu_seqlens. In a model under
            parallelize() they are cut into slices like the other inputs: each rank reads the label
            of the token before its slice.

    Returns:
        o [B, T, H, E] in q's dtype, or (o, final_state [B, H, D, E]) with
        `output_final_state=True`. States are float32 (float64 for float64 inputs).
    """
    check_linear_attention_args(q, k, v, log_decay, scale, initial_state)
    if group is not None and timeout is not None:
        check_timeout(timeout)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    state_dtype = chunked.acc_dtype(q.dtype)
    if log_decay is not None:
        log_decay = forget_all_as_finite(log_decay.to(state_dtype))
    if initial_state is not None:
        initial_state = initial_state.to(state_dtype)
    if group is None:
        runs = documents.slice_runs(cu_seqlens, document_ids, q.shape[0], q.shape[1], device=q.device)
        o, final_state = single_device(q, k, v, log_decay, initial_state, scale, runs)
    else:
        o, final_state = sequence_parallel_attention(
            q, k, v, log_decay, initial_state, scale, group=group, method=method, check=check,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout, cu_seqlens=cu_seqlens, document_ids=document_ids,
        )
    return (o, final_state) if output_final_state else o
