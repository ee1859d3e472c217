"""Loss parity: an example model trained on P ranks through parallelize() against the same model on one process.

    PYTHONPATH=. torchrun --standalone --nproc-per-node=4 bench/loss_parity.py --steps 300 --json parity.json --png parity.png
    PYTHONPATH=. torchrun --standalone --nproc-per-node=4 bench/loss_parity.py --model hybrid --pack --seq-len 8192

Rank 0 first trains the model as written, alone (examples/train.py with parallel=False: eager, the whole
sequence); then every rank trains lasp_fx.parallelize(model) on its slice of the same sequences. Both start
from the same weights and take the same batches (examples/train.py's Markov chain, packed documents with
--pack), AdamW after every step, so any difference in a step's function shows up in every later loss. Every
argument after ours goes to examples/train.py (--model, --seq-len, --dim, --layers, --compiler, --pack, ...).
Reported: both curves, each step's relative difference |parallel - one| / one, its maximum and where, and
the largest difference between ranks of one step (each rank's loss is the global one). CUDA: NCCL, one GPU a
rank, the reference on cuda:0; CPU: gloo.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from examples.train import MarkovData, _finish_distributed, _init_distributed, parse_args, train
from lasp_fx.cli.timing import environment


def _compare(ranks: list[list[float]], one: list[float]) -> dict:
    ref = torch.tensor(one, dtype=torch.float64)
    got = torch.tensor(ranks, dtype=torch.float64)  # [P, steps]
    rel = ((got[0] - ref).abs() / ref.abs()).tolist()
    worst = max(range(len(rel)), key=rel.__getitem__)
    return {"max_rel_diff": rel[worst], "at_step": worst + 1, "final_rel_diff": rel[-1],
            "max_rank_spread": float((got.max(0).values - got.min(0).values).max()), "rel_diff": rel}


def _plot(record: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    steps = range(1, len(record["one"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, record["one"], label="one process (the model as written)")
    ax1.plot(steps, record["parallel"][0], "--", label=f"parallelize(), {record['world_size']} ranks")
    ax1.axhline(record["floor"], color="grey", lw=0.8, label="the data's entropy")
    ax1.set_ylabel("loss")
    diffs = record["rel_diff"]
    apart = [(i + 1, d) for i, d in enumerate(diffs) if d > 0]
    if apart:
        ax2.semilogy(*zip(*apart), ".", ms=3)
    ax2.set_title(f"{len(diffs) - len(apart)} of {len(diffs)} steps equal to the last bit (not drawn)", fontsize=8)
    ax2.set_ylabel("|parallel - one| / one")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(f"{record['args']['model']}, {record['args']['seq_len']} tokens, {record['card']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "loss_parity.json"))
    ap.add_argument("--png", default=None)
    ours, rest = ap.parse_known_args(argv)
    args = parse_args(["--log-every", "50", *rest])
    device = _init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    one = train(args, device, parallel=False) if rank == 0 else None
    dist.barrier()
    mine = train(args, device, parallel=True)
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
    if rank == 0:
        record = {**environment(device), "world_size": world, "args": vars(args), "one": one, "parallel": ranks,
                  "floor": MarkovData(args.vocab).entropy, **_compare(ranks, one)}
        print(f"loss parity, {world} ranks against one process over {args.steps} steps: max relative difference "
              f"{record['max_rel_diff']:.2e} (step {record['at_step']}), final {record['final_rel_diff']:.2e}, "
              f"ranks apart by at most {record['max_rank_spread']:.1e}", flush=True)
        with open(ours.json, "w") as f:
            json.dump(record, f, indent=1)
        if ours.png:
            _plot(record, ours.png)
    _finish_distributed()


if __name__ == "__main__":
    main()
