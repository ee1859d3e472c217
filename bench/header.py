"""What the per-call rank check costs: the header's own work beside the op's fwd+bwd, at 8K and 32K tokens per rank.

    PYTHONPATH=. python bench/header.py --device cuda --json $OUT/header.json      # one GPU
    PYTHONPATH=. python bench/header.py --device cpu --ranks 2 --heads 2           # gloo ranks

Every state message carries a 64-value header (distributed/header.py). On the host (gloo) the
sender adds one cat of its state and the header (`Link.seal`) and the receiver reads 64 values
(`Link.open`). On CUDA the ring's link is one kernel (distributed/kernels/gathered.checked_step: header
check, decay step, and the next message written with the header) where it was two (exp, addcmul);
only the chain's first rank adds a copy of its state into a message (`Link.seal`); the all-gather's
combination kernel and the peer kernel check the headers they read (no launch of their own).
Two exchanges per fwd+bwd. One GPU has no exchange to ride on, so the GPU run times, on a state
of the op's size beside the single-device op's fwd+bwd (CUDA events, medians): the old link
(exp + addcmul), the new one (checked_step, sealing), and the first rank's seal. --ranks N on CPU
times the op over N gloo ranks with check=False (headers only) and check=True (plus the all-gather
of headers before the states move), and seal/open. Bytes: 256 per message next to B*H*D*E*4
(1 MiB at H = 16, D = E = 128): 0.02 %.
"""

from __future__ import annotations

import argparse
import json

import torch

import lasp_fx
from lasp_fx.cli.timing import card, inputs, median_ms
from lasp_fx.distributed import header as hdr
from lasp_fx.distributed.link import Link


def _timer(device):
    """Median us of `reps` calls (CUDA events on a GPU)."""
    return lambda fn, reps: median_ms(fn, device, 0, reps) * 1e3


class _OneRank:  # what Link needs of a group, for timing seal / open alone
    group_name = "bench"

    def rank(self):
        return 1

    def size(self):
        return 2


def _header_us(q, k, v, g, timed, reps, group=None):
    B, T, H, D = q.shape
    state = torch.randn(B, H, D, v.shape[-1], device=q.device)
    head = hdr.make(q, k, v, g, D**-0.5, "ring", "forward", 1)
    link = Link(group or _OneRank(), head, 60.0, tuple(state.shape), state.dtype, q.device, g is not None)

    def one_exchange():  # what a message adds: seal on the sender, open on the receiver
        msg = link.seal([state])
        link.open(msg[None], [0])

    return 2 * timed(one_exchange, reps)  # two exchanges per fwd+bwd


def _cuda_link_us(q, v, g, timed, reps):
    """{old link, new link, first rank's seal} in us, on a state of the op's size (CUDA)."""
    from lasp_fx.distributed.combine import step
    from lasp_fx.distributed.kernels.gathered import checked_step

    B, T, H, D = q.shape
    x, own = (torch.randn(B, H, D, v.shape[-1], device=q.device) for _ in range(2))
    A = g.float().sum(1)
    head = hdr.make(q, q, v, g, D**-0.5, "ring", "forward", 1)
    tail = hdr.as_tensor(head, x)
    msg = torch.cat([x.reshape(-1), tail])
    link = Link(_OneRank(), head, 60.0, tuple(x.shape), x.dtype, q.device, True, host=False)
    return {
        "old_link_us": timed(lambda: step(x, A, own), reps),
        "new_link_us": timed(lambda: checked_step(msg, tail, own, A, seal=True, checked=hdr.CHECKED.stop), reps),
        "first_rank_seal_us": timed(lambda: link.seal([own]), reps),
    }


def _op_us(q, k, v, g, timed, reps, **kw):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        o = lasp_fx.linear_attention(*leaves, g, **kw)
        o.sum().backward()

    fwd_bwd()
    return timed(fwd_bwd, reps)


def _inputs(T, H, D, device, dtype):
    x = inputs(T, H, D, "gate", dtype, device)
    return x["q"], x["k"], x["v"], x["g"]


def single(args):
    timed, rows = _timer(args.device), []
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    for T in (8192, 32768):
        q, k, v, g = _inputs(T, args.heads, args.dim, args.device, dtype)
        op = _op_us(q, k, v, g, timed, args.reps)
        row = dict(T=T, op_fwd_bwd_us=op)
        if args.device == "cuda":
            row.update(_cuda_link_us(q, v, g, timed, args.reps))
            # per fwd+bwd on the worst rank: two links (new - old each) plus, on the chain's first rank, one seal
            row["added_us"] = 2 * (row["new_link_us"] - row["old_link_us"]) + row["first_rank_seal_us"]
        else:
            row["added_us"] = _header_us(q, k, v, g, timed, args.reps)
        row["percent"] = 100 * row["added_us"] / op
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def ranks(rank, world, args):
    import torch.distributed as dist

    timed, rows = _timer("cpu"), []
    for T in (8192, 32768):
        q, k, v, g = _inputs(T, args["heads"], args["dim"], "cpu", torch.float32)
        row = dict(T=T, ranks=world)
        for method in ("ring", "allgather"):
            for check in (False, True):
                row[f"{method}_check{int(check)}_us"] = _op_us(q, k, v, g, timed, args["reps"], group=dist.group.WORLD,
                                                               method=method, check=check)
        row["header_us"] = _header_us(q, k, v, g, timed, args["reps"])
        row["percent_of_ring"] = 100 * row["header_us"] / row["ring_check0_us"]
        rows.append(row)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json", default="")
    args = p.parse_args()
    if args.ranks > 1:
        from lasp_fx.distributed.spawn import run_spawned

        rows = run_spawned(ranks, args.ranks, vars(args), timeout=3000)[0]
        print(json.dumps(rows, indent=1))
    else:
        rows = single(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card(args.device), "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
