"""Spawned-rank worker for packed documents: every rank's slice against each document run alone, in float64.

`check_cases(rank, world, cases, method)` runs on every rank under `spawn.run_spawned` and returns,
per case id, the relative-RMS error of each output and gradient of this rank (gradients of
replicated inputs, a per-head decay and the initial state, summed over ranks first). The
reference never sees a packed row: it runs each document alone (naive.py's quadratic form), the
initial state flowing into the first one, and the state after each rank's slice is its document's
state after that token.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import lasp_fx
from lasp_fx.ops import naive
from lasp_fx.ops.documents import ids_from_cu_seqlens
from lasp_fx.numerics import random_inputs, rel_rms

SCALE = 0.45


def layout(name: str, L: int, P: int, seed: int = 0) -> list[int]:
    """cu_seqlens of a packed row of P slices of L tokens (L > 64: a chunk edge inside every slice).

    spans3: one document from token 3 across three slices; edges: a start at every slice's first
    token and at its first chunk edge (local token 64); ones: 1-token documents at the row's start
    and at each slice's first and last token; random: a few starts anywhere.
    """
    total = P * L
    if name == "spans3":
        cuts = {3, 2 * L + 8, total - 2}
    elif name == "edges":
        cuts = {r * L for r in range(P)} | {r * L + 64 for r in range(P)}
    elif name == "ones":
        cuts = {1} | {c for r in range(P) for c in (r * L, r * L + 1, r * L + L - 1)}
    elif name == "random":
        gen = torch.Generator().manual_seed(seed)
        cuts = set(torch.randint(1, total, (3 * P,), generator=gen).tolist())
    else:
        raise ValueError(f"unknown layout {name!r}")
    return [0] + sorted(c for c in cuts if 0 < c < total) + [total]


def runs_of(ids_row: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of each maximal run of one label in a row of labels."""
    change = (torch.nonzero(ids_row[1:] != ids_row[:-1]).reshape(-1) + 1).tolist()
    edges = [0, *change, ids_row.numel()]
    return list(zip(edges[:-1], edges[1:]))


def documents_alone(x: dict, ids: torch.Tensor, ends: list[int], scale: float = SCALE) -> tuple:
    """o [B, T, H, E] with each document of `x` (q, k, v[, log_decay, initial_state]) run alone, and for
    each end e in `ends` the state after token e - 1 of its document ([B, H, D, E]): each row separately."""
    outs, states = [], []
    for b in range(ids.shape[0]):
        row = {n: (t[b : b + 1] if n != "log_decay" or t.dim() == 3 else t) for n, t in x.items()}
        docs = runs_of(ids[b])

        def run(start, stop, first):
            g = row.get("log_decay")
            g = None if g is None else (g[:, start:stop] if g.dim() == 3 else g)
            s0 = row.get("initial_state") if first else None
            return naive.quadratic_linear_attention(row["q"][:, start:stop], row["k"][:, start:stop],
                                                    row["v"][:, start:stop], g, scale=scale, initial_state=s0)

        outs.append(torch.cat([run(a, z, i == 0)[0] for i, (a, z) in enumerate(docs)], dim=1))
        row_states = []
        for e in ends:
            i, (a, _) = next((i, d) for i, d in enumerate(docs) if d[0] < e <= d[1])
            row_states.append(run(a, e, i == 0)[1])
        states.append(row_states)
    return torch.cat(outs), [torch.cat([s[r] for s in states]) for r in range(len(ends))]


def _case(rank: int, world: int, case: dict, method: str, seed: int) -> dict:
    L, B = case["L"], case.get("B", 1)
    gen = torch.Generator().manual_seed(seed)
    a = random_inputs(B, world * L, case["H"], case["D"], case["E"], kv_heads=case.get("Hk"), decay=case["decay"],
                      initial_state=case.get("init", False), generator=gen)
    w_o = torch.randn(B, world * L, case["H"], case["E"], generator=gen, dtype=torch.float64)
    w_f = torch.randn(world, B, case["H"], case["D"], case["E"], generator=gen, dtype=torch.float64)
    if "ids" in case:
        ids = torch.tensor(case["ids"])
        packing = dict(document_ids=ids)
    else:
        ids = ids_from_cu_seqlens(torch.tensor(case["cu"]))
        packing = dict(cu_seqlens=torch.tensor(case["cu"], dtype=torch.int32))

    # reference: each document alone, the loss over every rank's output and state
    ref = {n: t.clone().requires_grad_() for n, t in a.items()}
    o_ref, s_ref = documents_alone(ref, ids, [(r + 1) * L for r in range(world)])
    ((o_ref * w_o).sum() + sum((s * w).sum() for s, w in zip(s_ref, w_f))).backward()

    # this rank: its slice of the packed row
    cut = slice(rank * L, (rank + 1) * L)
    x = {n: a[n][:, cut].clone().requires_grad_() for n in ("q", "k", "v")}
    g = a.get("log_decay")
    if g is not None:
        x["log_decay"] = (g[:, cut] if g.dim() == 3 else g).clone().requires_grad_()
    if "initial_state" in a and rank == 0:  # read on rank 0 only
        x["initial_state"] = a["initial_state"].clone().requires_grad_()
    o, s = lasp_fx.linear_attention(
        x["q"], x["k"], x["v"], x.get("log_decay"), scale=SCALE, initial_state=x.get("initial_state"),
        output_final_state=True, group=dist.group.WORLD, method=method, **packing,  # P = 1: the single-device op
    )  # fmt: skip
    ((o * w_o[:, cut]).sum() + (s * w_f[rank]).sum()).backward()

    errors = {"o": rel_rms(o, o_ref[:, cut]), "final_state": rel_rms(s, s_ref[rank])}
    for n in ("q", "k", "v"):
        errors[f"d{n}"] = rel_rms(x[n].grad, ref[n].grad[:, cut])
    if g is not None:
        dg = x["log_decay"].grad
        if g.dim() == 1:  # a replicated parameter: the ranks' shares add up
            dist.all_reduce(dg)
            errors["dlog_decay"] = rel_rms(dg, ref["log_decay"].grad)
        else:
            errors["dlog_decay"] = rel_rms(dg, ref["log_decay"].grad[:, cut])
    if "initial_state" in a:
        ds = x["initial_state"].grad if rank == 0 else torch.zeros_like(a["initial_state"])
        dist.all_reduce(ds)
        errors["dinitial_state"] = rel_rms(ds, ref["initial_state"].grad)
    finite = all(bool(torch.isfinite(t).all()) for t in (o, s, *(v.grad for v in x.values())))
    return {"errors": errors, "finite": finite}


def check_cases(rank: int, world: int, cases: dict, method: str) -> dict:
    """{case id: {"errors": {name: rel. RMS}, "finite": bool}} for this rank."""
    return {cid: _case(rank, world, case, method, seed=i) for i, (cid, case) in enumerate(cases.items())}


def bad_total(rank: int, world: int, L: int) -> str:
    """The error every rank raises for cu_seqlens that end at the slice's length instead of the row's."""
    x = torch.randn(1, L, 2, 4, dtype=torch.float64)
    message = "no error"
    try:
        lasp_fx.linear_attention(x, x, x, group=dist.group.WORLD, cu_seqlens=torch.tensor([0, 3, L]))
    except ValueError as error:
        message = str(error)
    dist.barrier()  # refused before any message: no rank tears the group down while another still joins it
    return message


class PackedLM(torch.nn.Module):
    """A gated linear-attention layer over packed documents whose forward takes cu_seqlens (replicated:
    the whole row's offsets on every rank). kernel="fla" calls fla's chunk_simple_gla(cu_seqlens=) (traced
    as the op), "op" lasp_fx.linear_attention(cu_seqlens=): the same function; "ids" takes document ids
    [1, T] instead (sharded with the batch)."""

    def __init__(self, vocab=32, dim=16, heads=2, kernel="op"):
        super().__init__()
        self.h, self.kernel = heads, kernel
        if kernel == "fla":  # imported when built, as user code imports at the top (the substitutes need it)
            import fla.ops.simple_gla  # noqa: F401
        self.embed = torch.nn.Embedding(vocab, dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.gate = torch.nn.Linear(dim, heads)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids, docs):
        x = self.embed(ids)
        q, k, v = self.qkv(x).view(*x.shape[:2], 3, self.h, -1).unbind(2)
        g = torch.nn.functional.logsigmoid(self.gate(x))
        if self.kernel == "fla":
            from fla.ops.simple_gla import chunk_simple_gla

            o = chunk_simple_gla(q, k, v, g=g, scale=SCALE, cu_seqlens=docs)[0]
        elif self.kernel == "ids":
            o = lasp_fx.linear_attention(q, k, v, g, scale=SCALE, document_ids=docs)
        else:
            o = lasp_fx.linear_attention(q, k, v, g, scale=SCALE, cu_seqlens=docs)
        return self.head(x + o.flatten(2))


def parallel_model(rank: int, world: int, case: dict) -> dict:
    """PackedLM(kernel=case["kernel"]) under parallelize() against PackedLM(kernel="op") on one process
    (this rank computes both): max relative RMS of the logits and of every parameter's gradient.
    kernel "ids" takes case["ids"] (labels [1, T], sharded with the batch) where the others take cu."""
    T, cu = case["T"], torch.tensor(case["cu"], dtype=torch.int32)
    ids = torch.randint(0, 32, (1, T), generator=torch.Generator().manual_seed(3))
    docs = torch.tensor([case["ids"]]) if case["kernel"] == "ids" else cu
    torch.manual_seed(0)
    ref = PackedLM().double()
    model = PackedLM(kernel=case["kernel"]).double()
    model.load_state_dict(ref.state_dict())
    ref(ids, cu).pow(2).mean().backward()
    lasp_fx.parallelize(model, outputs="full", compiler="aot_eager", method=case.get("method", "auto"))
    out = model(ids, docs)
    out.pow(2).mean().backward()
    errors = {"logits": rel_rms(out, ref(ids, cu))}
    for (name, p), (_, p_ref) in zip(model.named_parameters(), ref.named_parameters()):
        errors[name] = rel_rms(p.grad, p_ref.grad)
    return errors
