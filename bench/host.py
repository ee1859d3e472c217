"""Host time of one call (Python, dispatch, kernel launches) with the GPU kept busy, and where it goes.

    PYTHONPATH=. python bench/host.py                                 # the op, its primitives, one launch
    torchrun --nproc-per-node=2 bench/host.py                         # + LASP (ring, check=False)
    PYTHONPATH=. python bench/host.py --cprofile 25                   # + the top functions by own time
    torchrun --nproc-per-node=2 bench/host.py --trace 25 --only LASP  # + torch.profiler's host table (all threads)
    PYTHONPATH=. python bench/host.py --device cpu --tokens 64 --reps 2   # a dry run (gloo under torchrun)

Why: at 32K tokens the op's kernels take ~1.3-2.4 ms per fwd+bwd on an H200, and a host that
needs as long to queue them sets the pace (bench/records/2026-11-28_fixed_decay/NOTES.md). A long
sleep kernel is queued first, so nothing the host waits for is in the way; each number is the
median over `--reps` calls. Shape: B=1, H=16, D=E=128, bf16, T=4096 (the host's work does not
depend on T), constant decay as a buffer.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats

import torch
import torch.distributed as dist

import lasp_fx
from lasp_fx.cli.timing import BUSY_CYCLES, card, host_ms, inputs, is_cuda, step, sync
from lasp_fx.config import DEFAULT_TIMEOUT
from lasp_fx.ops.op import kernels_for
from lasp_fx.ops.triton import launch

B, H, D, T = 1, 16, 128, 4096


def _busy(dev) -> None:
    """Keep the GPU busy for longer than the calls that follow take to queue."""
    if is_cuda(dev):
        torch.cuda._sleep(BUSY_CYCLES)


def _cases(dev, group, T):
    x = inputs(T, H, D, "const", torch.bfloat16, dev, batch=B)
    q, k, v, g, do = x["q"], x["k"], x["v"], x["g"], x["do"]
    leaves = [t.requires_grad_() for t in (q, k, v)]
    kern = kernels_for(q)
    scale = D**-0.5

    def triton_path(fn):  # Triton's own launch path for every kernel (ops.triton.launch off)
        def run():
            launch.ENABLED = False
            try:
                fn()
            finally:
                launch.ENABLED = True

        return run

    def on_this_thread(fn):  # autograd runs a CUDA backward on its own device thread unless told not to
        def run():
            with torch.autograd.set_multithreading_enabled(False):
                fn()

        return run

    class Nothing(torch.autograd.Function):  # autograd's own cost: three leaves in, one out, no work
        @staticmethod
        def forward(ctx, a, b, c):
            return torch.empty_like(a)

        @staticmethod
        def backward(ctx, grad):
            return grad, grad, grad

    qd, kd, vd = (t.detach() for t in (q, k, v))
    bwd_op = torch.ops.lasp_fx.linear_attention_backward
    custom_op = torch.ops.lasp_fx.linear_attention
    op_step = step(lambda: lasp_fx.linear_attention(q, k, v, g), leaves, do)
    cases = {
        "empty [B,T,H,D] (one allocation)": lambda: torch.empty_like(qd),
        "primitive fwd (3 launches)": lambda: kern.fwd(qd, kd, vd, g, scale),
        "primitive fwd, Triton's launch path": triton_path(lambda: kern.fwd(qd, kd, vd, g, scale)),
        "primitive bwd (7 launches)": lambda: kern.bwd(qd, kd, vd, g, scale, do, decay_grad=False),
        "primitive bwd, Triton's launch path": triton_path(
            lambda: kern.bwd(qd, kd, vd, g, scale, do, decay_grad=False)
        ),
        "autograd.Function, no work, fwd+bwd": step(lambda: Nothing.apply(q, k, v), leaves, do),
        "backward custom op, called": lambda: bwd_op(do, None, qd, kd, vd, g, None, None, None, scale, False),
        "op fwd": lambda: lasp_fx.linear_attention(q, k, v, g),
        "op fwd+bwd": op_step,
        "op fwd+bwd, backward on this thread": on_this_thread(op_step),
        "op fwd+bwd, Triton's launch path": triton_path(op_step),
        "op fwd+bwd via the custom op": step(lambda: custom_op(q, k, v, g, None, scale)[0], leaves, do),
    }
    if group is not None:
        sp_op = torch.ops.lasp_fx.sp_linear_attention
        lasp_step = step(lambda: lasp_fx.distributed.lasp.sequence_parallel_attention(
            q, k, v, g, None, scale, group=group, method="ring", check=False)[0], leaves, do)
        cases["LASP ring fwd+bwd (check=False)"] = lasp_step
        cases["LASP ring fwd+bwd, backward on this thread"] = on_this_thread(lasp_step)
        cases["LASP ring fwd+bwd, Triton's launch path"] = triton_path(lasp_step)
        cases["LASP ring fwd+bwd via the custom op"] = step(
            lambda: sp_op(q, k, v, g, None, scale, group.group_name, "ring", False, DEFAULT_TIMEOUT)[0], leaves, do)
        cases.update(_lasp_pieces(qd, kd, vd, g, do, scale, group))
    return cases


def _lasp_pieces(q, k, v, g, do, scale, group) -> dict:
    """The parts of one LASP fwd+bwd, each alone: which of them holds the host's time."""
    from lasp_fx.distributed import lasp, ring
    from lasp_fx.distributed.combine import wait_all
    from lasp_fx.ops.triton.states import add_late_at_end

    s = torch.randn(B, H, D, D, device=q.device)
    A = lasp._slice_decay(g, q)
    A_seg = torch.zeros(B, H, 9, device=q.device)
    kern = kernels_for(q)

    def exchange(direction):
        sends = []
        link = lasp._link(q, k, v, g, scale, group, "ring", DEFAULT_TIMEOUT,
                          "forward" if direction == "fwd" else "backward")
        if direction == "fwd":
            ring.forward(s, A, link, sends)
        else:
            ring.backward(s, A, s, link, sends)
        wait_all(sends, link)

    def send_recv():  # the bare NCCL pair: rank 0 sends, rank 1 receives
        if group.rank() == 0:
            group.send([s], 1, 0).wait()
        elif group.rank() == 1:
            buf = torch.empty_like(s)
            group.recv([buf], 0, 0).wait()

    late = lambda local: lambda: s  # noqa: E731
    return {
        "  one NCCL send / recv + wait": send_recv,
        "  ring exchange fwd (recv, step, send)": lambda: exchange("fwd"),
        "  ring exchange bwd": lambda: exchange("bwd"),
        "  slice decay": lambda: lasp._slice_decay(g, q),
        "  add_late_at_end": lambda: add_late_at_end(s, s, A_seg),
        "  primitive fwd, late state at once": lambda: kern.fwd(q, k, v, g, scale, state_hook=late),
        "  primitive bwd, late state at once": lambda: kern.bwd(q, k, v, g, scale, do, s, state_hook=late,
                                                                 decay_grad=False),
        "  LASP forward, no autograd": lambda: lasp._forward(q, k, v, g, None, scale, group, "ring", False,
                                                             DEFAULT_TIMEOUT),
        "  LASP gradients, no autograd": lambda: lasp._gradients(do, None, q, k, v, g, s, None, None, scale, group,
                                                                 "ring", False, DEFAULT_TIMEOUT),
    }


def _trace(fn, dev, reps: int, rows: int, say) -> None:
    """torch.profiler over `reps` calls with the GPU kept busy: host ops and CUDA API calls by self time."""
    from torch.profiler import ProfilerActivity, profile

    sync(dev)
    _busy(dev)
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * is_cuda(dev)) as prof:
        for _ in range(reps):
            fn()
    sync(dev)
    say(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--cprofile", type=int, default=0, help="print this many functions by own time per case")
    ap.add_argument("--sort", default="tottime", help="cProfile order: tottime or cumulative")
    ap.add_argument("--trace", type=int, default=0, help="print this many host ops (CUDA API calls included) by "
                    "self time per fwd+bwd case, from torch.profiler: it sees the autograd thread, cProfile does not")
    ap.add_argument("--only", default="", help="only the cases whose name contains this")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of every case (no GPU to keep busy)")
    ap.add_argument("--tokens", type=int, default=T, help="T (the host's work does not depend on it)")
    args = ap.parse_args()
    group, cuda = None, args.device == "cuda"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        group = dist.group.WORLD
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    say = print if group is None or group.rank() == 0 else (lambda *a, **k: None)
    say(f"card {card(dev)}  torch {torch.__version__}  T={args.tokens}  host ms per call (median):")
    for name, fn in _cases(dev, group, args.tokens).items():
        if args.only not in name:
            continue
        if group is not None:
            dist.barrier()
        ms = host_ms(fn, dev, args.reps)
        say(f"  {name:36s} {ms:7.3f}", flush=True)
        if args.cprofile and "fwd+bwd" in name:
            _busy(dev)
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.reps):
                fn()
            prof.disable()
            sync(dev)
            if group is None or group.rank() == 0:
                pstats.Stats(prof).sort_stats(args.sort).print_stats(args.cprofile)
        if args.trace and "fwd+bwd" in name:
            _trace(fn, dev, args.reps, args.trace, say)
    if group is not None:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
