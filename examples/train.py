"""Train an example model sequence-parallel with lasp_fx.

    torchrun --standalone --nproc-per-node=2 examples/train.py                 # 2 processes (gloo on CPU)
    torchrun --standalone --nproc-per-node=2 examples/train.py --model hybrid  # linear + softmax layer
    python examples/train.py --steps 20                                        # one process
    torchrun --standalone --nproc-per-node=2 examples/train.py --pack          # packed documents
    # on a machine with 4 GPUs (NCCL, one process per GPU), 8K tokens of each sequence per GPU:
    torchrun --standalone --nproc-per-node=4 examples/train.py --model hybrid --layers 4 --seq-len 32768

The hybrid model has causal softmax attention in every 4th layer and in its last (at the default
2 layers: one lightning-attention layer, then one softmax layer).

With --pack every row is documents of random lengths (1 to --doc-len tokens) packed end to end,
as HF's DataCollatorWithFlattening packs them: position_ids restart at 0 at each document, and the
label of each document's last token is -100 (nothing follows it in its document). The model
computes each document as if alone, also where one crosses from a rank's slice to the next.

Every rank builds the same model and the same batches; `lasp_fx.parallelize` gives each rank its
slice of the sequence and keeps the losses and gradients those of one device. The data is a
random Markov chain over the vocabulary (made here, no download): a model that learns the chain's
transitions drives the loss from log(vocab) down to the chain's entropy, printed as the floor.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import socket
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lasp_fx  # noqa: E402
from examples.models import MODELS, ModelConfig  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="lightning")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (all ranks together)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=64)
    p.add_argument("--method", choices=["auto", "ring", "allgather"], default="auto")
    p.add_argument("--compiler", choices=["auto", "inductor", "aot_eager", "eager"], default="auto")
    p.add_argument("--pack", action="store_true", help="pack documents of random lengths into every row")
    p.add_argument("--doc-len", type=int, default=96, help="with --pack: documents of 1 to this many tokens")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--json", metavar="PATH", help="rank 0 also writes the run (arguments, device, losses, time) here")
    return p.parse_args(argv)


def _init_distributed() -> torch.device:
    if "RANK" not in os.environ:  # a plain `python train.py`: a group of one process
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        return torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        return device
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dist.init_process_group("gloo")
    return torch.device("cpu")


class MarkovData:
    """Sequences from a fixed random transition table with a few likely successors per token."""

    def __init__(self, vocab: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(vocab, vocab, generator=gen) * 2.5
        self.probs = torch.softmax(logits, dim=-1)
        self.cdf = torch.cumsum(self.probs, dim=-1)
        stationary = torch.full((vocab,), 1.0 / vocab)
        for _ in range(200):
            stationary = stationary @ self.probs
        self.entropy = float(-(stationary[:, None] * self.probs * self.probs.clamp_min(1e-12).log()).sum())

    def batch(self, step: int, batch: int, length: int):
        """(input_ids, labels) [batch, length]; the same on every rank for the same step."""
        gen = torch.Generator().manual_seed(10_000 + step)
        u = torch.rand(batch, length + 1, generator=gen)
        seq = torch.empty(batch, length + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, self.cdf.shape[0], (batch,), generator=gen)
        for t in range(1, length + 1):  # inverse-CDF sampling of each next token
            rows = self.cdf[seq[:, t - 1]]
            seq[:, t] = torch.searchsorted(rows, u[:, t : t + 1].contiguous()).squeeze(1).clamp_max(self.cdf.shape[0] - 1)
        return seq[:, :-1], seq[:, 1:]

    def packed_batch(self, step: int, batch: int, length: int, max_doc: int):
        """(input_ids, labels, position_ids) [batch, length]: rows of documents of 1 to max_doc tokens
        cut from the chain, positions restarting at 0 at each, -100 as each document's last label."""
        ids, labels = self.batch(step, batch, length)
        gen = torch.Generator().manual_seed(20_000 + step)
        lengths = torch.randint(1, max_doc + 1, (batch, length), generator=gen)  # enough documents for a row
        ends = torch.zeros(batch, length + 1, dtype=torch.bool)
        ends.scatter_(1, torch.cumsum(lengths, 1).clamp_max(length), True)  # a document ends before each cut
        starts = torch.cat([torch.ones(batch, 1, dtype=torch.bool), ends[:, 1:-1]], 1)
        t = torch.arange(length).expand(batch, length)
        position_ids = t - torch.cummax(torch.where(starts, t, 0), 1).values
        return ids, labels.masked_fill(ends[:, 1:], -100), position_ids


def _progress(step: int, total: int, loss: float, tokens_per_s: float, floor: float) -> str:
    width = 24
    done = int(width * step / total)
    return (f"[{'#' * done}{'.' * (width - done)}] step {step:4d}/{total}  loss {loss:6.3f}  "
            f"(floor {floor:.3f})  {tokens_per_s / 1e3:8.1f}k tok/s")


def train(args, device: torch.device, parallel: bool = True) -> list[float]:
    """Train as `args` say, sequence-parallel over the default group (or plainly, parallel=False);
    returns the loss of every step (rank 0 prints the progress)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if parallel else (0, 1)
    cfg = ModelConfig(vocab_size=args.vocab, dim=args.dim, num_layers=args.layers, num_heads=args.heads)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = MODELS[args.model](cfg).to(device)
    if parallel:
        model = lasp_fx.parallelize(model, method=args.method, compiler=args.compiler)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = MarkovData(args.vocab)
    if rank == 0:
        layers = ", ".join(type(b.mixer).__name__ for b in model.blocks)
        packed = f", packed documents of 1-{args.doc_len} tokens" if args.pack else ""
        print(f"{args.model} ({layers}): {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters, "
              f"{world} rank(s) x {args.seq_len // world} tokens of each sequence, batch {args.batch_size}{packed}, "
              f"{device.type}; loss starts near log(vocab) = {math.log(args.vocab):.3f}", flush=True)
    start, losses = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        if args.pack:
            ids, labels, positions = data.packed_batch(step, args.batch_size, args.seq_len, args.doc_len)
            extra = {"position_ids": positions.to(device)}
        else:
            ids, labels = data.batch(step, args.batch_size, args.seq_len)
            extra = {}
        ids, labels = ids.to(device), labels.to(device)
        t0 = time.perf_counter()
        loss = model(ids, labels=labels, **extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        tokens_per_s = args.batch_size * args.seq_len / (time.perf_counter() - t0)
        if rank == 0 and (step % args.log_every == 0 or step in (1, args.steps)):
            end = "\n" if step % args.log_every == 0 or step == args.steps else ""
            print("\r" + _progress(step, args.steps, losses[-1], tokens_per_s, data.entropy), end=end, flush=True)
    seconds = time.perf_counter() - start
    if rank == 0:
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps, {seconds:.0f} s "
              f"(the first step compiles)", flush=True)
    if rank == 0 and args.json:
        device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "world_size": world, "device": device_name, "losses": losses,
                       "floor": data.entropy, "seconds": seconds}, f, indent=1)
    return losses


def _finish_distributed() -> None:
    """Destroy the process group while the interpreter is whole. A parallelized model sits in reference cycles that
    hold its group; left to the collector at exit, a gloo rank aborted at times ("terminate called without an
    active exception"; record 2026-12-07_eighth)."""
    gc.collect()
    dist.destroy_process_group()


def main():
    args = parse_args()
    device = _init_distributed()
    train(args, device)
    _finish_distributed()


if __name__ == "__main__":
    main()
