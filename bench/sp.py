"""LASP across GPUs, side by side in one run: ring, all-gather and auto against the single-GPU op at the same
local length (the ideal), the original LASP package's lasp_fuse_parallel, and an Ulysses all-to-all baseline.

    torchrun --nproc-per-node=4 bench/sp.py --tlocal 8192,32768,131072 --json $OUT/sp_4gpu.json
    torchrun --nproc-per-node=2 bench/sp.py --device cpu --tlocal 256 --check-only     # debug on gloo
    torchrun --nproc-per-node=4 bench/sp.py --tlocal 32768 --skip-check --impls ring,allgather   # a subset
    torchrun --nproc-per-node=2 bench/sp.py --profile 32768 --trace-dir $OUT   # per-kernel times, timelines

Shape: B=1, H=16, D=E=128, bf16, per-head decay (RetNet/lightning slopes; the original LASP has
no per-token gate). Each timing: barrier, CUDA events around one call, median of many, max over
ranks (lasp_fx/cli/timing.py); "loop" is the same fwd+bwd run back to
back, reps in a row after one barrier (a training loop, where host work hides behind the GPU);
"host" is the host's time per fwd+bwd while the GPU is kept busy (Python, dispatch, launches).
Before timing, every path is checked against the single-device op on the whole sequence (fp32 at
odd sizes against float64, and bf16 at the real shape against one GPU running all P*T tokens).

Floors per rank (T tokens, H heads, D = E): the local op moves the same bytes as one GPU on T
tokens; LASP adds one fp32 state (H*D*E*4 = 1 MiB) per direction per hop, and folding the late
state into the kernels' segment states reads one more D x E tile per segment and head (the
"fold" row: the local op with a late state handed back at once, against without); what is left
is the wait for the state (forward: the chain; backward: hidden behind the dq kernel). Ulysses
moves 2*(P-1)/P of q, k, v, o forward and of do, dq, dk, dv backward (T*H*D*2 bytes each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lasp_fx  # noqa: E402
from lasp_fx.cli.timing import (  # noqa: E402
    barrier, captured, card, graph_ms, host_ms, inputs, loop_ms, max_over_ranks, median_ms, slopes, step,
)
from lasp_fx.distributed import allgather, estimate, peer, ring  # noqa: E402
from lasp_fx.distributed.combine import wait_all  # noqa: E402
from lasp_fx.distributed.lasp import _link, sequence_parallel_attention  # noqa: E402
from lasp_fx.config import DEFAULT_TIMEOUT  # noqa: E402
from lasp_fx.ops.op import kernels_for  # noqa: E402
from lasp_fx.numerics import rel_rms  # noqa: E402
from ulysses import ulysses_attention  # noqa: E402

B, H, D = 1, 16, 128
# The paths timed as CUDA graphs too: not the baselines (the original LASP package syncs the host) nor
# the paths with check=True (the shape check reads gathered metadata on the host every call).
GRAPHED = ("single-GPU", "ring-nocheck", "allgather-nocheck", "auto-nocheck")


def _time(fn, dev, warm: int, rep: int) -> float:
    """Median ms of `fn` over `rep` calls after `warm`, each started together on all ranks; max over ranks."""
    return max_over_ranks(median_ms(fn, dev, warm, rep, before=barrier(dev)), dev)


def _local(x, r, T):
    cut = slice(r * T, (r + 1) * T)
    y = {n: x[n][:, cut].clone() for n in ("q", "k", "v", "do")}
    g = x["g"]
    y["g"] = None if g is None else (g[:, cut] if g.dim() == 3 else g).clone()
    return y


def _run_grads(fn, x):
    leaves = [x[n].detach().requires_grad_() for n in ("q", "k", "v")]
    g = None if x["g"] is None else x["g"].detach().requires_grad_()
    o = fn(*leaves, g)
    o.backward(x["do"])
    return [o] + [t.grad for t in leaves] + ([g.grad] if g is not None else [])


def _paths(group):
    return {
        "ring": lambda q, k, v, g: lasp_fx.linear_attention(q, k, v, g, group=group, method="ring"),
        "allgather": lambda q, k, v, g: lasp_fx.linear_attention(q, k, v, g, group=group, method="allgather"),
        "ulysses": lambda q, k, v, g: ulysses_attention(q, k, v, g, group=group),
    }


def _cast(x, dtype):
    """x with q, k, v, do in `dtype` and the decay in its state dtype."""
    y = {n: t.to(dtype) for n, t in x.items() if n != "g"}
    y["g"] = None if x["g"] is None else x["g"].to(torch.float64 if dtype == torch.float64 else torch.float32)
    return y


def check(dev, group, T, heads, dim, dtype, ref_dtype, decays) -> dict:
    """Max relative RMS error over (o, dq, dk, dv, dlog_decay) of every path against one device on all P*T tokens.

    A per-head decay's gradient is compared after summing the ranks' shares (all_reduce).
    """
    P, r = group.size(), group.rank()
    errs = {}
    for decay in decays:
        x = inputs(P * T, heads, dim, decay, dtype, dev, seed=1)
        ref = _run_grads(lasp_fx.linear_attention, _cast(x, ref_dtype))
        cut = slice(r * T, (r + 1) * T)
        for name, fn in _paths(group).items():
            if name == "ulysses" and heads % P:  # it splits heads over the ranks
                continue
            got = _run_grads(fn, _local(x, r, T))
            worst = 0.0
            for i, (a, b) in enumerate(zip(got, ref)):
                if i == 4 and x["g"].dim() == 1:  # per-head decay: shares sum to the full gradient
                    a = a.clone()
                    dist.all_reduce(a, group=group)
                    worst = max(worst, rel_rms(a, b))
                else:
                    worst = max(worst, rel_rms(a, b[:, cut]))
            t = torch.tensor([worst], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
            errs[f"{name}/{decay}"] = float(t)
    return errs


def _exchange(mod, direction, s, A, group):
    """One exchange of `mod` (ring or allgather) in `direction`, its sends waited for."""
    q = torch.empty(B, 1, H, D, device=s.device, dtype=torch.bfloat16)  # the shapes the header describes
    link = _link(q, q, q, A[0], D**-0.5, group, mod.__name__.rsplit(".", 1)[-1], DEFAULT_TIMEOUT, direction)

    def run():
        sends = []
        if direction == "forward":
            mod.forward(s, A, link, sends)
        else:
            mod.backward(s, A, s, link, sends)
        wait_all(sends, link)

    return run


def calibrate(dev, group, reps) -> dict:
    """Exchange alone, 1 MiB fp32 state (H*D*D*4), with a per-head decay: ring chain and all-gather, ms."""
    s = torch.randn(B, H, D, D, device=dev)
    A = -torch.rand(B, H, device=dev)
    out = {}
    for name, mod in (("ring", ring), ("allgather", allgather)):
        out[f"{name}_fwd_exchange_ms"] = _time(_exchange(mod, "forward", s, A, group), dev, 5, reps)
        out[f"{name}_bwd_exchange_ms"] = _time(_exchange(mod, "backward", s, A, group), dev, 5, reps)
    return out


def _lasp_original(x, P):
    from lasp import initialize_lasp, lasp_fuse_parallel
    from lasp.utils.seq_parallel_manager import sequence_parallel_is_initialized

    if not sequence_parallel_is_initialized():  # it builds its groups once per process
        initialize_lasp(1, P)
    q, k, v, do = (x[n].detach().transpose(1, 2).contiguous() for n in ("q", "k", "v", "do"))
    leaves = [t.requires_grad_() for t in (q, k, v)]
    rates = slopes(H).to(q.device).reshape(H, 1, 1)
    KV = torch.zeros(B, H, D, D, device=q.device, dtype=torch.float32)
    DKV = torch.zeros_like(KV)
    return (lambda: lasp_fuse_parallel(q, k, v, rates, KV, DKV)), leaves, do


def _impls(x, group, dev):
    """name -> (forward callable, leaves, output gradient)."""
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v")]
    q, k, v, g, do = x["q"], x["k"], x["v"], x["g"], x["do"]
    scale = D**-0.5
    impls = {
        "single-GPU": (lambda: lasp_fx.linear_attention(q, k, v, g), leaves, do),
        "ring": (lambda: lasp_fx.linear_attention(q, k, v, g, group=group, method="ring"), leaves, do),
        "allgather": (lambda: lasp_fx.linear_attention(q, k, v, g, group=group, method="allgather"), leaves, do),
        "auto": (lambda: lasp_fx.linear_attention(q, k, v, g, group=group), leaves, do),
        "auto-nocheck": (lambda: sequence_parallel_attention(q, k, v, g, None, scale, group=group, check=False)[0],
                         leaves, do),
        **{f"{m}-nocheck": (lambda m=m: sequence_parallel_attention(q, k, v, g, None, scale, group=group, method=m,
                                                                  check=False)[0], leaves, do)
           for m in ("ring", "allgather")},
        "ulysses": (lambda: ulysses_attention(q, k, v, g, group=group), leaves, do),
    }
    if dev.type == "cuda":
        impls["lasp-original"] = _lasp_original(x, group.size())
    return impls


def _components(x, dev, reps) -> dict:
    """The local op's fwd+bwd primitives with a late state handed back at once, and without, ms.

    The difference is what folding the state into the segment states costs, without any wait.
    """
    kern = kernels_for(x["q"])
    q, k, v, g, do = (x[n].detach() for n in ("q", "k", "v", "g", "do"))
    s = torch.randn(B, H, D, D, device=dev) * 1e-2

    def late(local):
        return lambda: s

    decay_grad = x["g"] is not None and x["g"].requires_grad  # as LASP decides: no dG for a decay buffer

    def step(hook):
        kern.fwd(q, k, v, g, D**-0.5, None, state_hook=hook)
        kern.bwd(q, k, v, g, D**-0.5, do, s, None, state_hook=hook, decay_grad=decay_grad)

    return {
        "plain_fwdbwd_ms": _time(lambda: step(None), dev, 3, reps),
        "fold_fwdbwd_ms": _time(lambda: step(late), dev, 3, reps),
        "plain_host_ms": max_over_ranks(host_ms(lambda: step(None), dev, reps, warmup=0, before=barrier(dev)), dev),  # kernels and their launches, no autograd
    }


def bench(dev, group, tlocals, reps, path, meta, only=None) -> list:
    P = group.size()
    rows = []
    for T in tlocals:
        x = _local(inputs(P * T, H, D, "const", torch.bfloat16, dev, seed=2), group.rank(), T)
        x["g"] = x["g"].float()
        impls = {n: f for n, f in _impls(x, group, dev).items() if only is None or n in only or n == "single-GPU"}
        row = {"T_local": T, "P": P, **_components(x, dev, reps)}
        for name, (fn, leaves, do) in impls.items():
            slow = name == "lasp-original" and T > 32768
            warm, rep = (1, 3) if slow else (5, reps)
            try:
                row[f"{name}_fwd_ms"] = _time(fn, dev, warm, rep)
                fwd_bwd, together = step(fn, leaves, do), barrier(dev)
                row[f"{name}_fwdbwd_ms"] = _time(fwd_bwd, dev, warm, rep)
                row[f"{name}_stream_ms"] = max_over_ranks(loop_ms(fwd_bwd, dev, rep, before=together), dev)
                row[f"{name}_host_ms"] = max_over_ranks(host_ms(fwd_bwd, dev, rep, warmup=0, before=together), dev)
                if dev.type == "cuda" and name in GRAPHED:
                    graph, graphloop = graph_ms(fwd_bwd, rep, before=together)
                    row[f"{name}_graph_ms"], row[f"{name}_graphloop_ms"] = (max_over_ranks(graph, dev),
                                                                            max_over_ranks(graphloop, dev))
            except Exception as ex:  # a baseline that fails is reported, not fatal
                row[f"{name}_error"] = f"{type(ex).__name__}: {str(ex)[:300]}"
            row[f"{name}_done_s"] = round(time.time() - meta["t0"], 1)  # where a slow run spends its time
            if group.rank() == 0 and path:  # after every impl: a run cut by its time limit keeps what it has
                with open(path, "w") as fh:
                    json.dump({**meta, "rows": rows + [row]}, fh, indent=1)
        rows.append(row)
        _print_row(row, impls)
        if group.rank() == 0 and path:
            with open(path, "w") as fh:
                json.dump({**meta, "rows": rows}, fh, indent=1)
        del x, impls
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _print_row(row, impls):
    if dist.get_rank() != 0:
        return
    base = row.get("single-GPU_fwdbwd_ms")
    ref = {n: row.get(f"{n}_fwdbwd_ms") for n in ("lasp-original", "ulysses")}
    print(f"\nP={row['P']} T/GPU={row['T_local']}: local primitives fwd+bwd {row['plain_fwdbwd_ms']:.3f} ms, "
          f"with a late state folded in {row['fold_fwdbwd_ms']:.3f} ms; host {row['plain_host_ms']:.3f} ms")
    stream_base = row.get("single-GPU_stream_ms")
    print(f"{'impl':18} {'fwd ms':>8} {'fwd+bwd':>8} {'vs 1 GPU':>9} {'x orig':>7} {'x ulysses':>9} "
          f"{'loop ms':>8} {'vs 1 GPU':>9} {'host ms':>8} {'graph ms':>8} {'vs 1 GPU':>9} {'g.loop ms':>9} {'vs 1 GPU':>9}")
    for name in impls:
        if f"{name}_error" in row:
            print(f"{name:18} error: {row[f'{name}_error']}")
            continue
        fb = row[f"{name}_fwdbwd_ms"]
        over = f"{100 * (fb / base - 1):+8.1f}%" if base else ""
        xo = f"{ref['lasp-original'] / fb:7.2f}" if ref["lasp-original"] else ""
        xu = f"{ref['ulysses'] / fb:9.2f}" if ref["ulysses"] else ""
        loop = row[f"{name}_stream_ms"]
        lover = f"{100 * (loop / stream_base - 1):+8.1f}%" if stream_base else ""
        gcol = ""
        for col in ("graph", "graphloop"):
            t, t_base = row.get(f"{name}_{col}_ms"), row.get(f"single-GPU_{col}_ms")
            gcol += f" {t:8.3f} {100 * (t / t_base - 1):+8.1f}%" if t and t_base else ""
        print(f"{name:18} {row[f'{name}_fwd_ms']:8.3f} {fb:8.3f} {over:>9} {xo:>7} {xu:>9} {loop:8.3f} {lover:>9} "
              f"{row[f'{name}_host_ms']:8.3f}{gcol}", flush=True)


def profile(dev, group, T, method, out_dir, graph=False):
    """Per-op device time of fwd+bwd of `method` at T tokens per GPU (check=False, as parallelize
    calls it), 3 steps back to back after warm-up: each rank's table in turn, and each rank's
    chrome trace (CPU and GPU timelines: where a rank waits) as out_dir/trace_rank<r>.json.gz."""
    import gzip
    import shutil

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = _local(inputs(group.size() * T, H, D, "const", torch.bfloat16, dev, seed=3), group.rank(), T)
    leaves = [x[n].requires_grad_() for n in ("q", "k", "v")]

    def fwd():
        return sequence_parallel_attention(x["q"], x["k"], x["v"], x["g"], None, D**-0.5, group=group,
                                           method=method, check=False)[0]

    # graph: the device's own timeline, no host gaps (kernels inside a graph are traced one by one)
    run = step(fwd, leaves, x["do"])
    run = captured(run, before=barrier(dev)).replay if graph else run
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    dist.barrier()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            torch.cuda.synchronize()
            dist.barrier()  # each replay starts together on all ranks, as the timings do
            run()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20)
    if out_dir:
        path = os.path.join(out_dir, f"trace_{method}{'_graph' if graph else ''}_rank{group.rank()}.json")
        prof.export_chrome_trace(path)
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(path)
    for r in range(group.size()):
        dist.barrier()
        if r == group.rank():
            print(f"\n--- profile rank {r}, {method}, T/GPU={T}\n{table}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tlocal", default="8192,32768,131072")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--impls", default="", help="comma-separated subset of the timed paths (single-GPU always runs)")
    ap.add_argument("--json", default="")
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--skip-check", action="store_true", help="timings only (no correctness pass, no calibration)")
    ap.add_argument("--profile", type=int, default=0, help="profile fwd+bwd at this T/GPU and stop")
    ap.add_argument("--method", default="ring", help="what --profile runs")
    ap.add_argument("--trace-dir", default="", help="--profile writes each rank's chrome trace here")
    ap.add_argument("--graph", action="store_true", help="--profile replays fwd+bwd captured as a CUDA graph")
    args = ap.parse_args()
    dev_type = args.device
    only = set(args.impls.split(",")) if args.impls else None
    dist.init_process_group("nccl" if dev_type == "cuda" else "gloo")
    rank, P = dist.get_rank(), dist.get_world_size()
    if dev_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    group = dist.group.WORLD
    say = print if rank == 0 else (lambda *a, **k: None)
    through_peers = peer.usable(group, dev, torch.float32)
    choice = estimate(P, B * H * D * D * 4, dev.type, through_peers)
    meta = {"card": card(dev), "P": P, "torch": torch.__version__, "kernels": kernels_for(torch.empty(1, device=dev,
            dtype=torch.bfloat16)).__name__, "auto": choice.method, "auto_reason": choice.reason,
            "TORCH_NCCL_HIGH_PRIORITY": os.environ.get("TORCH_NCCL_HIGH_PRIORITY", ""), "peer": through_peers}
    say(json.dumps(meta), flush=True)
    if args.profile:
        if dev.type != "cuda":
            raise SystemExit("--profile times CUDA kernels: run it on GPUs")
        profile(dev, group, args.profile, args.method, args.trace_dir, args.graph)
        dist.destroy_process_group()
        return

    meta["t0"] = time.time()
    if args.skip_check:
        bench(dev, group, [int(t) for t in args.tlocal.split(",")], args.reps, args.json, meta, only)
        dist.barrier()
        dist.destroy_process_group()
        return
    meta["check_fp32_vs_fp64"] = check(dev, group, 200 if dev.type == "cpu" else 1000, 4, 64, torch.float32,
                                       torch.float64, ("none", "const", "gate"))
    say("fp32 (odd sizes) vs float64 on one device, max rel RMS:", json.dumps(meta["check_fp32_vs_fp64"]), flush=True)
    if dev.type == "cuda":  # long enough slices that each backward reuses its forward's states (SAVED_CHUNKS)
        meta["check_fp32_saved_states"] = check(dev, group, 20000, 16, 64, torch.float32, torch.float64,
                                                ("none", "const", "gate"))
        say("fp32 at T/GPU=20000, H=16 vs float64:", json.dumps(meta["check_fp32_saved_states"]), flush=True)
    big = 256 if dev.type == "cpu" else 8192
    meta["check_bf16_vs_1gpu"] = check(dev, group, big, H, D, torch.bfloat16, torch.bfloat16, ("const",))
    say(f"bf16 at T/GPU={big} vs one device on all tokens (bf16), max rel RMS:",
        json.dumps(meta["check_bf16_vs_1gpu"]), flush=True)
    meta["exchange"] = calibrate(dev, group, args.reps)
    say("exchange alone (1 MiB state):", json.dumps(meta["exchange"]), flush=True)
    rows = [] if args.check_only else bench(dev, group, [int(t) for t in args.tlocal.split(",")], args.reps,
                                            args.json, meta, only)
    if rank == 0 and args.json:
        with open(args.json, "w") as fh:
            json.dump({**meta, "rows": rows}, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
