"""Spawned-rank workers for the softmax layers of hybrids: each rank's slice against one process.

A case is a dict: B (None: [H, s, D] inputs without a batch), H, Hk (key/value heads), s (tokens
per rank), D, E, docs ("none", "packed": contiguous documents with padding at a row's end and
start, "random": ids 0..3 drawn per token), max_tiles (None: the default), seed. Every rank draws
the whole sequence from the seed, runs `causal_attention_over_ranks` on its slice (with and without balancing), and
returns the relative-RMS errors of its output and of its q, k, v gradients against
`tail_softmax_reference` (an explicit T x T float64 softmax) of the whole sequence.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lasp_fx.numerics import rel_rms
from lasp_fx.ops.softmax_naive import tail_softmax_reference


def doc_ids(kind: str, B: int, T: int, s: int, gen: torch.Generator):
    """[B, T] document ids of the given kind (see the module docstring), or None for "none"."""
    if kind == "none":
        return None
    if kind == "random":
        return torch.randint(0, 4, (B, T), generator=gen)
    docs = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        pos, doc = 0, 0
        while pos < T:  # documents of 1 .. 2s tokens: some of one token, some across two or three ranks
            n = int(torch.randint(1, 2 * s + 1, (1,), generator=gen))
            doc += 1
            docs[b, pos:pos + n] = doc
            pos += n
    docs[0, -3:] = 0  # right padding
    docs[-1, :2] = 0  # left padding
    return docs


def global_inputs(case: dict, world: int) -> dict:
    gen = torch.Generator().manual_seed(case["seed"])
    B, T = case["B"] or 1, case["s"] * world
    H, Hk, D, E = case["H"], case["Hk"], case["D"], case["E"]
    x = {"q": torch.randn(B, H, T, D, generator=gen, dtype=torch.float64),
         "k": torch.randn(B, Hk, T, D, generator=gen, dtype=torch.float64),
         "v": torch.randn(B, Hk, T, E, generator=gen, dtype=torch.float64),
         "w": torch.randn(B, H, T, E, generator=gen, dtype=torch.float64)}
    x["docs"] = doc_ids(case["docs"], B, T, case["s"], gen)
    return x


def check_cases(rank: int, world_size: int, cases: list) -> list:
    """Per case and balance (True, False): {"o", "dq", "dk", "dv": relative-RMS error of this rank's slice}."""
    return [_check(rank, world_size, case, balance) for case in cases for balance in (True, False)]


def _check(rank, world_size, case, balance):
    from lasp_fx.distributed.softmax_sp import causal_attention_over_ranks

    x, s = global_inputs(case, world_size), case["s"]
    scale = case.get("scale", 0.6)
    ref = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v")}
    o_ref = tail_softmax_reference(ref["q"], ref["k"], ref["v"], scale, x["docs"], x["docs"])
    (o_ref * x["w"]).sum().backward()
    cut = slice(rank * s, (rank + 1) * s)
    local = {n: x[n][:, :, cut].clone().requires_grad_() for n in ("q", "k", "v")}
    args = [local[n] if case["B"] else local[n][0] for n in ("q", "k", "v")]  # B None: [H, s, D]
    docs = None if x["docs"] is None else x["docs"][:, cut]
    extra = {} if case.get("max_tiles") is None else {"max_tiles": case["max_tiles"]}
    o = causal_attention_over_ranks(*args, scale, case["Hk"] != case["H"], rank, dist.group.WORLD.group_name, docs,
                                    balance=balance, **extra)
    o = o if case["B"] else o[None]
    (o * x["w"][:, :, cut]).sum().backward()
    return {"o": rel_rms(o, o_ref[:, :, cut]),
            **{f"d{n}": rel_rms(local[n].grad, ref[n].grad[:, :, cut]) for n in ("q", "k", "v")}}
