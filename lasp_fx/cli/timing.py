"""Timers, speed floors and benchmark inputs: one copy for `lasp-fx bench` and every script in bench/.

A timer calls `fn` `warmup` times, then times `reps` calls: CUDA events on a GPU (the device's time between two
points of the stream), perf_counter elsewhere, and returns the median in ms. `before` runs ahead of each timed
call, outside the span (a barrier: calls that start together on every rank); `max_over_ranks` then takes the
slowest rank's figure.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import torch

CHUNK = 64  # the chunked algorithm's chunk length, for its FLOPs
BUSY_CYCLES = int(2e9)  # a sleep kernel of ~1 s at ~2 GHz: longer than the host work of any timed loop here


def is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def sync(device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def _span_ms(fn, device, calls: int = 1) -> float:
    """ms of `calls` calls of `fn` in a row, from the first call's start to the last one's end."""
    if is_cuda(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3


def _start(device, before) -> None:
    sync(device)
    if before is not None:
        before()
        sync(device)


def median_ms(fn, device, warmup: int = 3, reps: int = 10, before=None) -> float:
    """Median ms of one call of `fn` over `reps` calls, each started on an idle device."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _start(device, before)
        times.append(_span_ms(fn, device))
    return statistics.median(times)


def loop_ms(fn, device, reps: int, before=None) -> float:
    """ms per call of `reps` calls back to back (a training loop: the host runs ahead of the device, so the
    host's work per call hides behind earlier kernels); `before` runs once, ahead of the first."""
    _start(device, before)
    return _span_ms(fn, device, reps) / reps


def host_ms(fn, device, reps: int, warmup: int = 3, before=None) -> float:
    """Median host ms of one call while a sleep kernel keeps the GPU busy, so that nothing the host waits for
    is in the way: what Python, dispatch and launches cost per call (on a CPU: `median_ms`)."""
    if not is_cuda(device):
        return median_ms(fn, device, warmup, reps, before)
    for _ in range(warmup):
        fn()
    _start(device, before)
    torch.cuda._sleep(BUSY_CYCLES)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return statistics.median(times)


def captured(fn, before=None) -> torch.cuda.CUDAGraph:
    """`fn` captured in a CUDA graph (NCCL's collectives included), after a warm-up on a side stream as
    torch.cuda.graph asks; `before` (a barrier) runs ahead of the capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    _start("cuda", before)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_ms(fn, reps: int, before=None) -> tuple[float, float]:
    """`fn` as a CUDA graph, the device's time with no host work in the way (a step run as a graph:
    torch.compile's "reduce-overhead"): (`median_ms` of one replay, `loop_ms` of `reps` replays).

    Across ranks a barrier lets them go tens of microseconds apart, and a step that exchanges states waits
    that out: the first figure charges the barrier's skew to the exchange, the second (one barrier, then
    replays back to back, as a training loop whose host runs ahead) leaves only the ranks' own drift.
    """
    graph = captured(fn, before)
    return median_ms(graph.replay, "cuda", 3, reps, before), loop_ms(graph.replay, "cuda", reps, before)


def flushed_ms(fn, grads=None, warmup_ms: int = 25, rep_ms: int = 100) -> float:
    """Median ms of `fn` by triton.testing.do_bench: L2 flushed before each call, `grads`' .grad reset."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grads, return_mode="median")


def peak_mib(fn) -> float:
    """Peak CUDA memory one call of `fn` allocates above what was allocated before it, MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def max_over_ranks(value: float, device, group=None) -> float:
    """The largest of every rank's `value` (the slowest rank's time, the worst rank's error)."""
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t)


def barrier(device):
    """A barrier over the default group, on the current GPU's stream where there is one."""
    import torch.distributed as dist

    if is_cuda(device):
        return lambda: dist.barrier(device_ids=[torch.cuda.current_device()])
    return dist.barrier


# ------------------------------------------------------------------ floors
def chunked_flops(batch: int, tokens: int, heads: int, dim: int, value_dim: int | None = None) -> int:
    """FLOPs of the chunked algorithm's forward, B T H (2C(D + E) + 4DE); fwd+bwd is three times that."""
    e = value_dim or dim
    return batch * tokens * heads * (2 * CHUNK * (dim + e) + 4 * dim * e)


def floors(batch: int, tokens: int, heads: int, dim: int, gate: bool) -> dict:
    """{"fwd", "fwdbwd"}: (bytes, FLOPs) of the op at D = E in 16 bits: read q, k, v, do (+ a float32 gate,
    read twice in the backward, its gradient written) and write o, dq, dk, dv once (forward: q, k, v, o)."""
    n = batch * tokens * heads
    flops = chunked_flops(batch, tokens, heads, dim)
    return {"fwd": (2 * n * 4 * dim + 4 * n * gate, flops), "fwdbwd": (2 * n * 8 * dim + 12 * n * gate, 3 * flops)}


def ceilings() -> tuple[float, float]:
    """This GPU's copy bandwidth (bytes read + written per s) and bf16 matmul rate (FLOP/s)."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    bandwidth = 2 * a.numel() / (flushed_ms(lambda: b.copy_(a)) * 1e-3)
    m = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    rate = 2 * 8192**3 / (flushed_ms(lambda: m @ m) * 1e-3)
    return bandwidth, rate


# ------------------------------------------------------------------ inputs
def slopes(heads: int) -> torch.Tensor:
    """Lightning / RetNet per-head decay rates 2^(-8(i + 1)/H); the log-decay is their negative."""
    return torch.tensor([2 ** (-8 * (i + 1) / heads) for i in range(heads)])


def inputs(tokens: int, heads: int, dim: int, decay: str = "const", dtype=torch.bfloat16, device="cpu",
           batch: int = 1, seed: int = 0, value_dim: int | None = None) -> dict:
    """q, k (scaled by D^-1/2), v, do as [B, T, H, *] in `dtype` and the log-decay g: None ("none"), -slopes
    per head ("const") or a per-token gate logsigmoid(N(2, 1)) [B, T, H] ("gate"), in float32 (float64 for
    float64 inputs). Drawn on the CPU from `seed`: the same values on every device and rank."""
    gen = torch.Generator().manual_seed(seed)
    e = value_dim or dim
    x = {n: torch.randn(batch, tokens, heads, dim if n in "qk" else e, generator=gen) for n in ("q", "k", "v", "do")}
    x["k"] /= dim**0.5
    g = None
    if decay == "const":
        g = -slopes(heads)
    elif decay == "gate":
        g = torch.nn.functional.logsigmoid(torch.randn(batch, tokens, heads, generator=gen) + 2.0)
    elif decay != "none":
        raise ValueError(f"decay {decay!r}: use none, const or gate")
    out = {n: t.to(device, dtype) for n, t in x.items()}
    out["g"] = None if g is None else g.to(device, torch.float64 if dtype == torch.float64 else torch.float32)
    return out


def leaves(x: dict, names=("q", "k", "v")) -> list:
    """Fresh leaves of x's tensors `names` that take gradients."""
    return [x[n].detach().clone().requires_grad_() for n in names]


def step(fn, grad_leaves, grad_out):
    """One forward and backward: the leaves' gradients cleared (no accumulation kernels), fn(), backward."""
    def run():
        for t in grad_leaves:
            t.grad = None
        fn().backward(grad_out)

    return run


# ------------------------------------------------------------------ where it ran
def card(device) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if is_cuda(device) else "cpu"


def environment(device) -> dict:
    """The card, versions, date and command of a run, for its JSON."""
    env = {"torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
           "command": " ".join(sys.argv), "card": card(device)}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        env["fla_core"] = version("fla-core")
    except Exception:  # noqa: BLE001 - not installed
        env["fla_core"] = None
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001 - not a checkout
        env["commit"] = None
    return env
