"""Chunks per segment (nsub) against speed: the Triton primitives at several nsub, side by side.

    PYTHONPATH=. python bench/segments.py [--ts 32768,131072] [--nsubs 4,8,16,32] [--decays const,gate]

Why: every kernel walks the chunks of its segment in order, carrying the state in registers;
states are written only at segment boundaries. Short segments give more programs (parallel
work) but more state bytes (the state pass writes B x H x n_seg x D x E float32 and the scan
reads and writes them); long ones give fewer, longer serial walks. `common.segment_chunks`
picks nsub so that segments x heads fill the GPU ~4x; this prints what the other choices cost.
Shape as bench/op.py: B=1, H=16, D=E=128, bf16; const is a decay buffer (no gradient), gate a
learnable per-token decay. Medians of triton.testing.do_bench (L2 flushed; lasp_fx/cli/timing.py).
"""

import argparse

import torch

from lasp_fx.cli.timing import card, flushed_ms, inputs
from lasp_fx.ops import triton as tk
from lasp_fx.ops.triton.common import CHUNK, segment_chunks

B, H, D = 1, 16, 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ts", default="32768,131072")
    ap.add_argument("--nsubs", default="2,4,8,16,32")
    ap.add_argument("--decays", default="const,gate")
    args = ap.parse_args()
    print(f"card: {card('cuda')}  torch {torch.__version__}")
    print(f"{'T':>7} {'decay':6} {'nsub':>5} {'n_seg':>5}  {'fwd ms':>7} {'fwd+bwd':>8}")
    for T in map(int, args.ts.split(",")):
        auto = segment_chunks(-(-T // CHUNK), B * H, torch.device("cuda"))
        for decay in args.decays.split(","):
            x = inputs(T, H, D, decay, torch.bfloat16, "cuda", batch=B)
            q, k, v, g, do = x["q"], x["k"], x["v"], x["g"], x["do"]
            scale, dg = D**-0.5, decay == "gate"
            for nsub in sorted({*map(int, args.nsubs.split(",")), auto}):
                fwd = lambda: tk.fwd(q, k, v, g, scale, nsub=nsub)  # noqa: E731
                both = lambda: (fwd(), tk.bwd(q, k, v, g, scale, do, nsub=nsub, decay_grad=dg))  # noqa: E731
                t_f, t_b = flushed_ms(fwd), flushed_ms(both)
                n_seg = -(-T // (CHUNK * nsub))
                mark = "  <- segment_chunks" if nsub == auto else ""
                print(f"{T:7d} {decay:6} {nsub:5d} {n_seg:5d}  {t_f:7.3f} {t_b:8.3f}{mark}", flush=True)


if __name__ == "__main__":
    main()
