"""Train an example model sequence-parallel with lasp_fx.

    torchrun --standalone --nproc-per-node=2 examples/train.py                 # 2 processes (gloo on CPU)
    torchrun --standalone --nproc-per-node=2 examples/train.py --model hybrid  # linear + softmax layer
    python examples/train.py --steps 20                                        # one process
    # on a machine with 4 GPUs (NCCL, one process per GPU), 8K tokens of each sequence per GPU:
    torchrun --standalone --nproc-per-node=4 examples/train.py --model hybrid --layers 4 --seq-len 32768

The hybrid model has causal softmax attention in every 4th layer and in its last (at the default
2 layers: one lightning-attention layer, then one softmax layer).

Every rank builds the same model and the same batches; `lasp_fx.parallelize` gives each rank its
slice of the sequence and keeps the losses and gradients those of one device. The data is a
random Markov chain over the vocabulary (made here, no download): a model that learns the chain's
transitions drives the loss from log(vocab) down to the chain's entropy, printed as the floor.
"""

from __future__ import annotations

import argparse
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


def _args():
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
    p.add_argument("--log-every", type=int, default=10)
    return p.parse_args()


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


def _progress(step: int, total: int, loss: float, tokens_per_s: float, floor: float) -> str:
    width = 24
    done = int(width * step / total)
    return (f"[{'#' * done}{'.' * (width - done)}] step {step:4d}/{total}  loss {loss:6.3f}  "
            f"(floor {floor:.3f})  {tokens_per_s / 1e3:8.1f}k tok/s")


def main():
    args = _args()
    device = _init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = ModelConfig(vocab_size=args.vocab, dim=args.dim, num_layers=args.layers, num_heads=args.heads)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = MODELS[args.model](cfg).to(device)
    model = lasp_fx.parallelize(model, method=args.method, compiler=args.compiler)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = MarkovData(args.vocab)
    if rank == 0:
        layers = ", ".join(type(b.mixer).__name__ for b in model.blocks)
        print(f"{args.model} ({layers}): {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k parameters, "
              f"{world} rank(s) x {args.seq_len // world} tokens of each sequence, batch {args.batch_size}, "
              f"{device.type}; loss starts near log(vocab) = {math.log(args.vocab):.3f}", flush=True)
    start, first_loss = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        ids, labels = (t.to(device) for t in data.batch(step, args.batch_size, args.seq_len))
        t0 = time.perf_counter()
        loss = model(ids, labels=labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = loss.item()
        first_loss = value if first_loss is None else first_loss
        tokens_per_s = args.batch_size * args.seq_len / (time.perf_counter() - t0)
        if rank == 0 and (step % args.log_every == 0 or step in (1, args.steps)):
            end = "\n" if step % args.log_every == 0 or step == args.steps else ""
            print("\r" + _progress(step, args.steps, value, tokens_per_s, data.entropy), end=end, flush=True)
    if rank == 0:
        print(f"loss {first_loss:.3f} -> {value:.3f} in {args.steps} steps, {time.perf_counter() - start:.0f} s "
              f"(the first step compiles)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
