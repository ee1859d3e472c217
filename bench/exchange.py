"""LASP's all-gather exchange of one state per rank, by transport: NCCL + combination kernel, or the peer kernel.

    torchrun --nproc-per-node=4 bench/exchange.py --json $OUT/exchange.json

Each rank holds one fp32 state of H*D*E*4 = 1 MiB and its H log-decays, and needs the decayed
sum of the states before it (the forward's direction; distributed/allgather.py):
  nccl  all-gather of every rank's (state, log-decays), then distributed/kernels/gathered.py's kernel:
        each rank receives (P-1) MiB, ~3 us at ~400 GB/s over NVLink;
  peer  distributed/kernels/peer.py: rank r pushes its state into the P-1-r ranks after it, flags per
        tile, and combines what it received, in one launch.
Both are latency, not bytes. Every timing is a CUDA graph of `--inner` exchanges replayed
`--reps` times back to back (max over ranks), per exchange:
  alone   the exchanges back to back (what an exposed exchange costs);
  busy    a bf16 matmul of ~0.1 ms per exchange, alone;
  beside  the matmuls with each exchange on a side stream beside its matmul: beside - busy is
          what the exchange costs overlapped (NCCL's kernels take SMs from the matmul).
The two transports' results are compared first (they must agree to rounding).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from lasp_fx.cli.timing import barrier, card, graph_ms, max_over_ranks
from lasp_fx.distributed import allgather, peer
from lasp_fx.distributed.kernels.gathered import combine_gathered
from lasp_fx.numerics import rel_rms


def _nccl(s, a, group):
    rows = allgather.gather_rows(torch.cat([s.reshape(-1), a.reshape(-1)]), group)
    return combine_gathered(rows, s.shape, group.rank(), True, True)


def _peer(s, a, group):
    return peer.exchange(s, a, None, group, forward=True)


TRANSPORTS = {"nccl": _nccl, "peer": _peer}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--inner", type=int, default=20)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--matmul", type=int, default=3072, help="side of the bf16 matmul run beside each exchange")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dev, group = torch.device("cuda", torch.cuda.current_device()), dist.group.WORLD
    gen = torch.Generator(device=dev).manual_seed(rank)
    s = torch.randn(1, args.heads, args.dim, args.dim, device=dev, generator=gen)
    a = -torch.rand(1, args.heads, device=dev, generator=gen)
    mm = torch.randn(args.matmul, args.matmul, device=dev, dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    out = {"card": card(dev), "P": group.size(), "torch": torch.__version__,
           "state_MiB": s.numel() * 4 / 2**20, "matmul": args.matmul,
           "peer_usable": peer.usable(group, s.device, s.dtype)}
    got = {name: fn(s, a, group) for name, fn in TRANSPORTS.items()}
    pairs = zip(got["peer"], got["nccl"]) if rank > 0 else [(got["peer"][1], got["nccl"][1])]  # rank 0: no late
    out["peer_vs_nccl_rel_rms"] = max_over_ranks(max(rel_rms(x, y) for x, y in pairs), dev)

    def per_exchange_us(fn):  # replays back to back after one barrier, the slowest rank's
        return max_over_ranks(graph_ms(fn, args.reps, before=barrier(dev))[1], dev) * 1e3 / args.inner

    for name, fn in TRANSPORTS.items():
        def alone(fn=fn):
            for _ in range(args.inner):
                fn(s, a, group)

        def beside(fn=fn):
            for _ in range(args.inner):
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    fn(s, a, group)
                mm @ mm
                torch.cuda.current_stream().wait_stream(side)

        out[f"{name}_alone_us"] = per_exchange_us(alone)
        out[f"{name}_beside_us"] = per_exchange_us(beside)

    def busy():
        for _ in range(args.inner):
            mm @ mm

    out["busy_us"] = per_exchange_us(busy)
    for name in TRANSPORTS:
        out[f"{name}_overlap_cost_us"] = out[f"{name}_beside_us"] - out["busy_us"]
    if rank == 0:
        print(json.dumps(out, indent=1), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
