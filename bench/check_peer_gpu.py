"""GPU check of the peer exchange kernel (distributed/kernels/peer.py) with P ranks simulated on one GPU.

    PYTHONPATH=. python bench/check_peer_gpu.py

Each simulated rank has its own slots and flags on the GPU and its own stream; all ranks'
kernels are launched at once, so they run concurrently and really wait on each other's flags
(system-scope atomics, as across GPUs). Several calls in both directions reuse the buffers;
every rank's (late, end) is compared with the float64 chain of steps, and every flag must be
down at the end. Then one CUDA-graph capture of a forward and a backward call, replayed.
Exits 1 on any failure. A real multi-GPU check is bench/sp.py's (LASP on P GPUs).
"""

import argparse
import sys

import torch

from lasp_fx.distributed.peer import PeerBuffers
from lasp_fx.distributed.kernels import peer as kernel
from lasp_fx.numerics import rel_rms

B, H, D, E = 1, 16, 128, 128


def reference(x, a, rank, forward, d_final=None):
    """(late, end) of distributed/kernels/gathered.py's docstring, as a chain of steps in float64."""
    def step(acc, j):
        return x[j] + torch.exp(a[j])[..., None, None] * acc

    acc = torch.zeros_like(x[0])
    for j in (range(rank) if forward else reversed(range(rank + 1, x.shape[0]))):
        acc = step(acc, j)
    return (acc if d_final is None else acc + d_final), step(acc, rank)


def buffers(P, dev):
    """Each simulated rank's PeerBuffers: its slots and flags, the table of everyone's, its status word."""
    tiles = kernel.tiles(B, H, D, E)
    slots = [torch.zeros(P * tiles * kernel.SLOT, device=dev) for _ in range(P)]
    flags = [torch.zeros(P * tiles, dtype=torch.int32, device=dev) for _ in range(P)]
    table = lambda ts: torch.tensor([t.data_ptr() for t in ts], device=dev)  # noqa: E731
    return [PeerBuffers(slots[r], flags[r], table(slots), table(flags), torch.zeros(1, dtype=torch.int32, device=dev),
                        mapped=(slots, flags)) for r in range(P)]


def _run(P, bufs, streams, forward, x, a, d_final):
    outs = [None] * P
    # the ranks that depend on none first: in one process a first call's kernel load waits for the GPU to
    # be idle, which a rank spinning on senders not yet launched never is (across processes order is free)
    order = range(P) if forward else reversed(range(P))
    for r in order:
        with torch.cuda.stream(streams[r]):
            outs[r] = kernel.exchange(x[r], a[r], d_final, r, P, forward, bufs[r])
    return outs


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    dev = torch.device("cuda")
    worst, ok = 0.0, True
    for P in (2, 3, 4):
        bufs, streams = buffers(P, dev), [torch.cuda.Stream() for _ in range(P)]
        for call, forward in enumerate((True, False, False, True, True, False)):
            gen = torch.Generator(device=dev).manual_seed(P * 100 + call)
            x = torch.randn(P, B, H, D, E, device=dev, generator=gen, dtype=torch.float64)
            a = -torch.rand(P, B, H, device=dev, generator=gen, dtype=torch.float64) * 2
            d_final = None if forward else torch.randn(B, H, D, E, device=dev, dtype=torch.float64, generator=gen)
            for s in streams:
                s.wait_stream(torch.cuda.current_stream())
            outs = _run(P, bufs, streams, forward, x.float(), a.float(), None if d_final is None else d_final.float())
            torch.cuda.synchronize()
            for r in range(P):
                ref_late, ref_end = reference(x, a, r, forward, d_final)
                errs = [rel_rms(outs[r][1], ref_end)] + ([] if forward and r == 0 else [rel_rms(outs[r][0], ref_late)])
                worst = max(worst, *errs)
                ok &= max(errs) < 1e-6
        up = sum(int(b.flags.abs().sum()) for b in bufs) + sum(int(b.status.item()) for b in bufs)
        ok &= up == 0
        print(f"P={P}: 6 calls, concurrent ranks on one GPU, max rel RMS {worst:.2e}, flags/status left {up}",
              flush=True)

        # a CUDA graph per rank holding one forward and one backward call, replayed 3 times
        x = torch.randn(P, B, H, D, E, device=dev)
        a = -torch.rand(P, B, H, device=dev)
        graphs, outs = [], []
        for r in range(P):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, stream=streams[r]):
                outs.append((kernel.exchange(x[r], a[r], None, r, P, True, bufs[r]),
                             kernel.exchange(x[r], a[r], None, r, P, False, bufs[r])))
            graphs.append(g)
        for _ in range(3):
            for r in range(P):
                with torch.cuda.stream(streams[r]):
                    graphs[r].replay()
        torch.cuda.synchronize()
        for r in range(P):
            for i, forward in enumerate((True, False)):
                ref_late, ref_end = reference(x.double(), a.double(), r, forward, None)
                err = rel_rms(outs[r][i][1], ref_end)
                ok &= err < 1e-6
        up = sum(int(b.flags.abs().sum()) for b in bufs)
        ok &= up == 0
        print(f"P={P}: graphs replayed 3 times, ends match: {ok}, flags left {up}", flush=True)
    print("ALL OK" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
