"""Precision of the decay's gradient against float64 on a GPU, beside dq's, as T grows.

    PYTHONPATH=. python bench/check_decay_grad_gpu.py [--ts 4096,32768] [--json out.json]
    PYTHONPATH=. python bench/check_decay_grad_gpu.py --device cpu --ts 256 --heads 2    # a dry run (no Triton)

dG is a reverse cumsum over the sequence of q.dq - k.dk, whose pairs of tokens after t cancel.
A gradient whose error grew with T would show here. Decays: the test inputs' (testing.numerics)
and weak ones (x 0.02: decay lengths of hundreds to thousands of tokens, as RetNet's slowest
heads and gates near 1), constant per head (learnable) and per token. bf16 and fp16 inputs,
float64 reference through the chunked PyTorch path on the same GPU.
"""

import argparse
import json

import torch

import lasp_fx
from lasp_fx.cli.timing import card
from lasp_fx.numerics import random_inputs, rel_rms


def _grads(a, do, dtype):
    leaves = {n: (x.to(dtype) if n in ("q", "k", "v") else x).detach().requires_grad_() for n, x in a.items()}
    o = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], leaves["log_decay"])
    o.backward(do.to(dtype))
    return {n: x.grad for n, x in leaves.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ts", default="4096,32768")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--device", default="cuda")
    p.add_argument("--json", default="")
    args = p.parse_args()
    rows = []
    print(f"{'T':>6} {'decay':6} {'strength':8} {'dtype':5} {'dlog_decay':>10} {'dq':>9}")
    for T in (int(t) for t in args.ts.split(",")):
        for decay in ("const", "gate"):
            for strength in (1.0, 0.02):
                gen = torch.Generator().manual_seed(T + len(decay))
                a = random_inputs(1, T, args.heads, 128, 128, decay=decay, generator=gen)  # float64
                a["log_decay"] = a["log_decay"] * strength
                a = {n: x.to(args.device) for n, x in a.items()}
                do = torch.randn(1, T, args.heads, 128, generator=gen, dtype=torch.float64).to(args.device)
                ref = _grads(a, do, torch.float64)
                for dname, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                    got = _grads({n: x.float() if n == "log_decay" else x for n, x in a.items()}, do, dtype)
                    row = dict(T=T, decay=decay, strength=strength, dtype=dname,
                               dlog_decay=rel_rms(got["log_decay"], ref["log_decay"]), dq=rel_rms(got["q"], ref["q"]))
                    rows.append(row)
                    print(f"{T:6d} {decay:6} {strength:8g} {dname:5} {row['dlog_decay']:10.2e} {row['dq']:9.2e}",
                          flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card(args.device), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
