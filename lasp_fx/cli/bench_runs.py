"""The measurements behind `lasp-fx bench`: the op on one device, and LASP on spawned ranks.

Op (per length T): lasp_fx's linear_attention, the float64 quadratic reference (naive.py; it
builds B*H*T*T values, so it is skipped past REFERENCE_BYTES) and causal SDPA, forward and
forward + backward, median of `reps` timed calls after `warmup`; each lasp_fx row carries its
relative RMS error against the float64 reference (output and dq) and its rate in GFLOP/s, with
the FLOPs of the chunked algorithm (chunk C = 64): B*T*H*(2C(D + E) + 4DE) forward, three times
that with the backward.

Sequence parallel (`sp_worker`, one call per rank of a spawned group): rank r holds tokens
[r*L, (r+1)*L) of one sequence and runs the op over the group (ring and all-gather state
exchange); every rank checks its slice against one device on the whole sequence, which rank 0
also times with `time_impl`, as the op table is timed. A timing is the median over calls that
start together (barrier), max over ranks. On the CPU each rank runs one thread, and so does the
op table (`lasp-fx bench` sets it): the rows compare.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from lasp_fx.cli.timing import barrier, chunked_flops, inputs, leaves, max_over_ranks, median_ms, step

REFERENCE_BYTES = 2**30  # the float64 reference's T x T scores per (B, H), above this it is skipped


@dataclass(frozen=True)
class Shape:
    heads: int
    dim: int
    dtype: str
    device: str
    batch: int = 1


def _inputs(shape: Shape, T: int) -> dict:
    return inputs(T, shape.heads, shape.dim, dtype=getattr(torch, shape.dtype), device=shape.device,
                  batch=shape.batch)


def _lasp_fx(x):
    import lasp_fx

    q, k, v = leaves(x)
    return lambda: lasp_fx.linear_attention(q, k, v, x["g"]), [q, k, v]


def _reference(x):
    from lasp_fx.ops.naive import quadratic_linear_attention

    q, k, v = (t.detach().double().requires_grad_() for t in (x["q"], x["k"], x["v"]))
    return lambda: quadratic_linear_attention(q, k, v, x["g"].double())[0], [q, k, v]


def _sdpa(x):
    q, k, v = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (x["q"], x["k"], x["v"]))
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2), [q, k, v]


IMPLS = {"lasp_fx": _lasp_fx, "quadratic float64": _reference, "sdpa causal": _sdpa}


def time_impl(make, x: dict, device: str, warmup: int, reps: int) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """fwd ms (no grad) and fwd+bwd ms of one implementation (`make(x) -> (fn, leaves)`), then its output
    and dq from one more call: the one measurement of the op table and of LASP's one-device row."""
    fn, grads = make(x)
    fwd_bwd = step(fn, grads, x["do"].to(grads[0].dtype))
    with torch.no_grad():
        fwd = median_ms(fn, device, warmup, reps)
    both = median_ms(fwd_bwd, device, warmup, reps)
    fwd_bwd()
    return fwd, both, fn().detach(), grads[0].grad


def op_rows(shape: Shape, T: int, warmup: int, reps: int) -> list[dict]:
    """One row per implementation at length T: fwd / fwd+bwd ms, FLOPs, error of lasp_fx."""
    x = _inputs(shape, T)
    flops = chunked_flops(shape.batch, T, shape.heads, shape.dim)
    with_reference = shape.batch * shape.heads * T * T * 8 <= REFERENCE_BYTES
    rows, outputs = [], {}
    for name, make in IMPLS.items():
        if name == "quadratic float64" and not with_reference:
            continue
        fwd, both, o, dq = time_impl(make, x, shape.device, warmup, reps)
        outputs[name] = (o, dq)
        rows.append(dict(impl=name, tokens=T, fwd_ms=fwd, fwdbwd_ms=both, **asdict(shape)))
    rows[0].update(fwd_gflops=flops / rows[0]["fwd_ms"] / 1e6, fwdbwd_gflops=3 * flops / rows[0]["fwdbwd_ms"] / 1e6)
    if with_reference:
        from lasp_fx.numerics import rel_rms

        (o, dq), (o_ref, dq_ref) = outputs["lasp_fx"], outputs["quadratic float64"]
        rows[0].update(err_o=rel_rms(o, o_ref), err_dq=rel_rms(dq, dq_ref))
    return rows


def sp_worker(rank: int, world_size: int, shape: dict, local: int, warmup: int, reps: int,
              methods: list[str]) -> list[dict]:
    """On each spawned rank: time LASP over the default group; rank 0 also times one device."""
    import torch.distributed as dist

    import lasp_fx
    from lasp_fx.numerics import rel_rms

    shape = Shape(**shape)
    if shape.device == "cuda":
        torch.cuda.set_device(rank)
        shape = Shape(**{**asdict(shape), "device": f"cuda:{rank}"})
    x = _inputs(shape, world_size * local)
    whole = [x[n] for n in ("q", "k", "v")]
    mine = {n: x[n].narrow(1, rank * local, local) for n in ("q", "k", "v", "do")}
    device, together = shape.device, barrier(shape.device)
    reference = lasp_fx.linear_attention(*whole, x["g"]).narrow(1, rank * local, local)
    rows = []
    for method in methods:
        q, k, v = leaves(mine)

        def fwd():
            return lasp_fx.linear_attention(q, k, v, x["g"], group=dist.group.WORLD, method=method)

        with torch.no_grad():
            err = rel_rms(fwd(), reference)
            t_fwd = median_ms(fwd, device, warmup, reps, before=together)
        t_both = median_ms(step(fwd, [q, k, v], mine["do"]), device, warmup, reps, before=together)
        rows.append(dict(method=method, fwd_ms=max_over_ranks(t_fwd, device), fwdbwd_ms=max_over_ranks(t_both, device),
                         err_o=max_over_ranks(err, device)))
    if rank == 0:  # the others wait at the next barrier: one device (this rank's) on all P * L tokens
        t_fwd, t_both, _, _ = time_impl(_lasp_fx, x, device, warmup, reps)
        rows.append(dict(method="one device", fwd_ms=t_fwd, fwdbwd_ms=t_both, err_o=0.0))
    together()
    return [dict(r, ranks=world_size, local_tokens=local, tokens=world_size * local, **asdict(shape)) for r in rows]
