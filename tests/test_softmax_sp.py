"""Softmax layers of hybrids under sequence parallelism: tiles merged by log-sum-exp, no s x T tensor.

Every rank's output and q, k, v gradients against one process's dense float64 attention, with and
without document ids (packed with padding, random ids, the masked-block fallback), GQA and MQA; the
op alone (odd tails, the tile plan, opcheck); the hybrid example model through parallelize().
"""

import pytest
import torch

from lasp_fx.distributed.spawn import run_spawned
from lasp_fx.numerics import rel_rms
from lasp_fx.ops import softmax_plan
from lasp_fx.ops.softmax_naive import tail_softmax_reference
from lasp_fx.ops.softmax_tail import tail_softmax_attention
from tests.helpers import workers_parallel, workers_softmax

TOL = 1e-12


def _case(name, B, H, Hk, s, D, E, docs="none", max_tiles=None, seed=0):
    return dict(name=name, B=B, H=H, Hk=Hk, s=s, D=D, E=E, docs=docs, max_tiles=max_tiles, seed=seed)


CASES = [
    _case("mha", 2, 3, 3, 5, 4, 4),
    _case("gqa-value-heads-differ", 1, 4, 2, 7, 3, 5, seed=1),
    _case("no-batch-dim", None, 2, 2, 5, 4, 4, seed=2),
    _case("mqa-packed", 2, 2, 1, 6, 4, 4, docs="packed", seed=3),
    _case("random-ids", 2, 2, 2, 5, 4, 4, docs="random", seed=4),
    _case("packed-masked-blocks", 2, 4, 2, 6, 4, 4, docs="packed", max_tiles=1, seed=5),
]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4], ids=lambda p: f"P{p}")
def test_every_rank_matches_one_process(world_size):
    results = run_spawned(workers_softmax.check_cases, world_size, CASES, timeout=300)
    runs = [(case["name"], balance) for case in CASES for balance in (True, False)]
    bad = [f"{case} (balance={balance}) rank {rank}/{world_size}: {name} off by {err:.2e}"
           for rank, per_rank in enumerate(results) for (case, balance), errs in zip(runs, per_rank)
           for name, err in errs.items() if not err <= TOL]
    assert not bad, "\n".join(bad)


def _inputs(N, H, Hk, s, K, D, E, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(N, h, n, d, generator=gen, dtype=torch.float64).requires_grad_()
            for h, n, d in ((H, s, D), (Hk, K, D), (Hk, K, E))]


DOC_MODES = [pytest.param(docs, tiles, id=f"{docs}-{name}") for docs, tiles, name in (
    ("none", softmax_plan.MAX_TILES, "runs"), ("packed", softmax_plan.MAX_TILES, "runs"), ("packed", 1, "masked"),
    ("random", softmax_plan.MAX_TILES, "runs"), ("random", 1, "masked"))]


@pytest.mark.parametrize("docs, max_tiles", DOC_MODES)
@pytest.mark.parametrize("K", [7, 17], ids=lambda K: f"K{K}")  # 17: the queries' start is not a multiple of s
def test_tail_op_matches_dense(K, docs, max_tiles):
    N, H, Hk, s, D, E = 2, 4, 2, 7, 4, 4
    q, k, v = _inputs(N, H, Hk, s, K, D, E, seed=K)
    ids = workers_softmax.doc_ids(docs, N, K, 3, torch.Generator().manual_seed(K))
    docs_q = None if ids is None else ids[:, K - s:]
    out = tail_softmax_attention(q, k, v, 0.5, docs_q, ids, max_tiles)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = tail_softmax_reference(q, k, v, 0.5, docs_q, ids)
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    assert rel_rms(out, ref) <= TOL
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_rms(g, r) <= TOL, f"d{name}"


def test_padding_queries_get_zeros_and_no_gradient():
    q, k, v = _inputs(1, 2, 2, 4, 8, 4, 4, seed=0)
    ids = torch.tensor([[1, 1, 1, 0, 2, 2, 0, 0]])
    out = tail_softmax_attention(q, k, v, None, ids[:, 4:], ids)
    assert out[0, :, 2:].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[0, :, 2:].abs().max() == 0
    assert k.grad[0, :, [3, 6, 7]].abs().max() == 0  # padding keys are seen by nobody
    assert k.grad[0, :, :3].abs().max() == 0  # document 1 is not seen by the queries of document 2


def test_plan_is_tiles_of_at_most_s_by_s_and_one_per_document_piece():
    s, world = 8, 4
    docs = torch.tensor([[1] * 5 + [2] * 20 + [3] * 3 + [4] * 4])  # 2 spans ranks 0-3, 4 is rank 3's tail
    tiles = softmax_plan.plan(1, s, s * world, docs[:, 3 * s:], docs)
    assert all(t.q1 - t.q0 <= s and t.k1 - t.k0 <= s for t in tiles)
    # rank 3's queries: doc 2's last token (over its 3 blocks of keys on ranks 0-2, and itself), doc 3, doc 4
    assert len(tiles) == 3 + 1 + 1 + 1 and not any(t.masked for t in tiles)
    assert len(softmax_plan.plan(1, s, s * world, None, None)) == world
    masked = softmax_plan.plan(1, s, s * world, docs[:, 3 * s:], docs, max_tiles=1)
    assert [t.k0 for t in masked] == [0, 8, 16, 24]  # doc 2 reaches back to rank 0: no block is skipped
    padded = torch.tensor([[1] * 8 + [0] * 24])
    assert [t.k0 for t in softmax_plan.plan(1, s, s * world, padded[:, 3 * s:], padded, max_tiles=1)] == []


@pytest.mark.parametrize("docs", [False, True], ids=["plain", "docs"])
def test_opcheck(docs):
    q, k, v = (x.detach().requires_grad_() for x in _inputs(1, 2, 1, 3, 9, 4, 4, seed=3))
    ids = torch.tensor([[1, 1, 2, 2, 2, 2, 2, 3, 3]]) if docs else None
    args = (q, k, v, None if ids is None else ids[:, 6:], ids, 0.5, softmax_plan.MAX_TILES)
    torch.library.opcheck(torch.ops.lasp_fx.tail_softmax_attention.default, args)


def test_bad_inputs_are_named():
    q, k, v = _inputs(1, 3, 2, 4, 8, 4, 4, seed=0)
    with pytest.raises(ValueError, match="kv heads must divide"):
        tail_softmax_attention(q, k, v)
    q, k, v = _inputs(1, 2, 2, 4, 8, 4, 4, seed=0)
    with pytest.raises(ValueError, match="for both the queries and the keys"):
        tail_softmax_attention(q, k, v, docs_q=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer ids of shape"):
        tail_softmax_attention(q, k, v, docs_q=torch.ones(1, 4), docs_k=torch.ones(1, 8))
    with pytest.raises(ValueError, match="at least as many keys"):
        tail_softmax_attention(q, k[:, :, :3], v[:, :, :3])


def _hybrid_case():
    ids, labels = workers_parallel.lm_batch(2, 22, 64, seed=7)
    return dict(model="examples.models:HybridLM", ids=ids, labels=labels, options={"compiler": "aot_eager"},
                device="cpu")


@pytest.mark.parametrize("world_size", [2], ids=lambda p: f"P{p}")
def test_hybrid_through_parallelize_compiled(world_size):
    # aot_eager (the CPU default) traces the tail op as one opaque node; 22 tokens: 11 per rank
    case = _hybrid_case()
    ref = workers_parallel.single(case)
    results = run_spawned(workers_parallel.parallel, world_size, [case], timeout=600)
    for rank, (got,) in enumerate(results):
        assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, f"rank {rank}"
        assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-10, f"rank {rank}"
        for p, g in ref["grads"].items():
            assert rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g)) <= 1e-10, f"rank {rank}: {p}"
