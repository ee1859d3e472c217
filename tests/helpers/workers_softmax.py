"""Spawned-rank workers for the softmax layers of hybrids: each rank's slice against one process.

A case is a dict: B (None: [H, s, D] inputs without a batch), H, Hk (key/value heads), s (tokens
per rank), D, E, docs ("none", "packed": documents of 1 .. 2s tokens with padding runs of id 0 at
a row's end and start, "random": ids 0..2 drawn per token, so runs of a few tokens), keep ("none",
"padded": HF-style right and left padding, "random"), local (ids and flags passed as this rank's
[B, s] instead of every rank's [B, T]), max_tiles (None: the default), seed. Every rank draws the
whole sequence from the seed, runs `causal_attention_over_ranks` on its slice (with and without
balancing), and returns the relative-RMS errors of its output and of its q, k, v gradients
against `tail_softmax_reference` (an explicit T x T float64 softmax) of the whole sequence, each
maximal run of equal ids one document.
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
        return torch.randint(0, 3, (B, T), generator=gen)
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


def key_flags(kind: str, B: int, T: int, gen: torch.Generator):
    """[B, T] booleans (False: padding) of the given kind, or None for "none"."""
    if kind == "none":
        return None
    if kind == "random":
        return torch.rand(B, T, generator=gen) < 0.7
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, -4:] = False  # right padding
    keep[-1, :3] = False  # left padding: its first queries see nothing
    return keep


def runs(ids):
    """Each maximal run of equal ids numbered apart, by a plain loop (the documents' convention)."""
    out = torch.zeros_like(ids)
    for b in range(ids.shape[0]):
        n = 0
        for t in range(ids.shape[1]):
            n += t == 0 or bool(ids[b, t] != ids[b, t - 1])
            out[b, t] = n
    return out


def global_inputs(case: dict, world: int) -> dict:
    gen = torch.Generator().manual_seed(case["seed"])
    B, T = case["B"] or 1, case["s"] * world
    H, Hk, D, E = case["H"], case["Hk"], case["D"], case["E"]
    x = {"q": torch.randn(B, H, T, D, generator=gen, dtype=torch.float64),
         "k": torch.randn(B, Hk, T, D, generator=gen, dtype=torch.float64),
         "v": torch.randn(B, Hk, T, E, generator=gen, dtype=torch.float64),
         "w": torch.randn(B, H, T, E, generator=gen, dtype=torch.float64)}
    x["docs"] = doc_ids(case.get("docs", "none"), B, T, case["s"], gen)
    x["keep"] = key_flags(case.get("keep", "none"), B, T, gen)
    return x


def check_cases(rank: int, world_size: int, cases: list) -> list:
    """Per case and balance (True, False): {"o", "dq", "dk", "dv": relative-RMS error of this rank's slice}."""
    return [_check(rank, world_size, case, balance) for case in cases for balance in (True, False)]


def _check(rank, world_size, case, balance):
    from lasp_fx.distributed.softmax_sp import causal_attention_over_ranks

    x, s = global_inputs(case, world_size), case["s"]
    scale = case.get("scale", 0.6)
    ref = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v")}
    o_ref = tail_softmax_reference(ref["q"], ref["k"], ref["v"], scale,
                                   None if x["docs"] is None else runs(x["docs"]), x["keep"])
    (o_ref * x["w"]).sum().backward()
    cut = slice(rank * s, (rank + 1) * s)
    local = {n: x[n][:, :, cut].clone().requires_grad_() for n in ("q", "k", "v")}
    args = [local[n] if case["B"] else local[n][0] for n in ("q", "k", "v")]  # B None: [H, s, D]
    tokens = {n: x[n] if x[n] is None or not case.get("local") else x[n][:, cut] for n in ("docs", "keep")}
    extra = {} if case.get("max_tiles") is None else {"max_tiles": case["max_tiles"]}
    o = causal_attention_over_ranks(*args, scale, case["Hk"] != case["H"], rank, dist.group.WORLD.group_name,
                                    tokens["keep"], tokens["docs"], balance=balance, **extra)
    o = o if case["B"] else o[None]
    (o * x["w"][:, :, cut]).sum().backward()
    return {"o": rel_rms(o, o_ref[:, :, cut]),
            **{f"d{n}": rel_rms(local[n].grad, ref[n].grad[:, :, cut]) for n in ("q", "k", "v")}}
