"""A hybrid's softmax layer with an attention_mask, as rank 3 of P = 4, on one GPU: what padding costs.

Run on one GPU from the repository root:
    PYTHONPATH=. python bench/padding.py --json $OUT/padding.json
    PYTHONPATH=. python bench/padding.py --device cpu --tlocal 64        # a smoke run at tiny sizes

The op parallelize() runs for a softmax layer whose mask is HF's padding mask (`causal & mask[b, kv]`,
passes/shard/padding_masks.py): the tail op over the keys of ranks 0..3 with the keys' flags. Rows,
fwd+bwd medians (CUDA events), B = 2, H = 16, D = 128, bf16: no mask (flags None), an all-ones
mask (must cost what no mask costs: softmax_plan drops flags that are all True), right padding (row
0's last quarter) and left padding (row 1's first eighth). Before timing, the all-ones output must
equal the no-mask output bit for bit, and the padded ones the dense masked SDPA in float32.
"""

import argparse
import json

import torch
import torch.nn.functional as F

from lasp_fx.cli import timing
from lasp_fx.numerics import rel_rms
from lasp_fx.ops.softmax_tail import tail_softmax_attention

WORLD, ROWS = 4, 2


def _flags(kind: str, K: int, device) -> torch.Tensor | None:
    if kind == "none":
        return None
    keep = torch.ones(ROWS, K, dtype=torch.bool, device=device)
    if kind == "right":
        keep[0, K - K // 4:] = False
    elif kind == "left":
        keep[1, :K // 8] = False
    return keep


def _inputs(s: int, heads: int, dim: int, dtype, device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    K = s * WORLD
    return [torch.randn(ROWS, heads, n, dim, generator=gen, device=device, dtype=dtype) for n in (s, K, K)]


def check(a) -> dict:
    """All-ones == none bit for bit; padded == dense masked SDPA (float32, a small size)."""
    s = min(a.tlocal, 256)
    q, k, v = _inputs(s, 4, 64, torch.float32, a.device)
    K = k.shape[2]
    plain = tail_softmax_attention(q, k, v)
    out = {"ones_equals_none": bool(torch.equal(tail_softmax_attention(q, k, v, keep=_flags("ones", K, a.device)),
                                                plain))}
    causal = torch.ones(s, K, dtype=torch.bool, device=a.device).tril(K - s)
    for kind in ("right", "left"):
        keep = _flags(kind, K, a.device)
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=causal & keep[:, None, None, :])
        out[f"{kind}_rel_rms"] = rel_rms(tail_softmax_attention(q, k, v, keep=keep), dense)
    out["ok"] = out["ones_equals_none"] and all(out[f"{k}_rel_rms"] <= 1e-4 for k in ("right", "left"))
    return out


def _step(a, kind: str):
    q, k, v = _inputs(a.tlocal, a.heads, a.dim, torch.bfloat16, a.device)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    keep = _flags(kind, k.shape[2], a.device)
    return timing.step(lambda: tail_softmax_attention(q, k, v, keep=keep), [q, k, v], torch.ones_like(q))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tlocal", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cuda", help='"cpu": a smoke run of the script at tiny sizes')
    ap.add_argument("--json")
    a = ap.parse_args()
    result = {**timing.environment(a.device), "tlocal": a.tlocal, "world": WORLD, "rank": WORLD - 1,
              "rows_in_batch": ROWS, "heads": a.heads, "dim": a.dim, "dtype": "bf16", "check": check(a), "rows": []}
    print(result["check"], flush=True)
    for kind in ("none", "ones", "right", "left"):
        ms = timing.median_ms(_step(a, kind), a.device, warmup=3, reps=a.reps)
        result["rows"].append({"mask": kind, "fwd_bwd_ms": round(ms, 3)})
        print(result["rows"][-1], flush=True)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
