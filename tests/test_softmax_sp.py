"""Softmax layers of hybrids under sequence parallelism: tiles merged by log-sum-exp, no s x T tensor.

Every rank's output and q, k, v gradients against one process's dense float64 attention, balanced
and not, with and without document ids (packed with padding runs, runs of a few tokens, the
masked-block fallback) and padding flags (HF-style, random), GQA and MQA; the op alone (tails not
on a block edge, the tile plan, opcheck, bad inputs); the hybrid example model through parallelize().
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


def _case(name, B, H, Hk, s, D, E, seed, **extra):
    return dict(name=name, B=B, H=H, Hk=Hk, s=s, D=D, E=E, seed=seed, **extra)


CASES = [
    _case("mha", 2, 3, 3, 5, 4, 4, 0),
    _case("gqa-value-heads-differ", 1, 4, 2, 7, 3, 5, 1),
    _case("no-batch-dim", None, 2, 2, 5, 4, 4, 2),
    _case("mqa-packed", 2, 2, 1, 6, 4, 4, 3, docs="packed"),
    _case("short-runs-local-ids", 2, 2, 2, 5, 4, 4, 4, docs="random", local=True),
    _case("packed-masked-blocks", 2, 4, 2, 6, 4, 4, 5, docs="packed", max_tiles=1),
    _case("hf-padding", 2, 2, 2, 5, 4, 4, 6, keep="padded"),
    _case("random-padding-and-packed-local", 2, 2, 1, 6, 4, 4, 7, keep="random", docs="packed", local=True),
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


MODES = [pytest.param(docs, keep, tiles, id=f"{docs}-{keep}-{name}") for docs, keep, tiles, name in (
    ("none", "none", softmax_plan.MAX_TILES, "blocks"), ("packed", "none", softmax_plan.MAX_TILES, "runs"),
    ("packed", "none", 1, "masked"), ("random", "none", softmax_plan.MAX_TILES, "runs"),
    ("none", "padded", softmax_plan.MAX_TILES, "runs"), ("packed", "random", softmax_plan.MAX_TILES, "runs"),
    ("random", "random", 1, "masked"))]


@pytest.mark.parametrize("docs, keep, max_tiles", MODES)
@pytest.mark.parametrize("K", [7, 17], ids=lambda K: f"K{K}")  # 17: the queries' start is not a multiple of s
def test_tail_op_matches_dense(K, docs, keep, max_tiles):
    N, H, Hk, s, D, E = 2, 4, 2, 7, 4, 4
    q, k, v = _inputs(N, H, Hk, s, K, D, E, seed=K)
    gen = torch.Generator().manual_seed(K)
    ids, flags = workers_softmax.doc_ids(docs, N, K, 3, gen), workers_softmax.key_flags(keep, N, K, gen)
    out = tail_softmax_attention(q, k, v, 0.5, ids, flags, max_tiles)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = tail_softmax_reference(q, k, v, 0.5, ids, flags)
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    assert rel_rms(out, ref) <= TOL
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_rms(g, r) <= TOL, f"d{name}"


@pytest.mark.parametrize("docs, keep, max_tiles", MODES)
def test_bf16_tiles_on_every_device(device, docs, keep, max_tiles):
    """bf16 through each kernel a device picks (CUDA: flash, and the memory-efficient one for masked tiles),
    rank 3 of 4 at head size 64, against float64 on the same rounded inputs: to bf16's rounding, no inf."""
    N, H, Hk, s, D = 2, 4, 2, 77, 64
    q, k, v = (t.detach() for t in _inputs(N, H, Hk, s, 4 * s, D, D, seed=3))
    gen = torch.Generator().manual_seed(3)
    ids, flags = workers_softmax.doc_ids(docs, N, 4 * s, 9, gen), workers_softmax.key_flags(keep, N, 4 * s, gen)
    low = [t.to(device, torch.bfloat16).requires_grad_() for t in (q, k, v)]
    to_dev = (lambda x: None if x is None else x.to(device))
    out = tail_softmax_attention(*low, None, to_dev(ids), to_dev(flags), max_tiles)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w.to(device)).sum(), low)
    ref_in = [t.detach().cpu().double().requires_grad_() for t in low]
    ref = tail_softmax_reference(*ref_in, D ** -0.5, ids, flags)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
    errs = {"o": rel_rms(out.cpu(), ref), **{f"d{n}": rel_rms(g.cpu(), r) for n, g, r in zip("qkv", grads, ref_grads)}}
    assert all(e <= 2e-2 for e in errs.values()), errs


def test_rows_that_see_nothing_get_zeros_and_no_gradient():
    q, k, v = _inputs(1, 2, 2, 4, 8, 4, 4, seed=0)
    keep = torch.tensor([[True, True, True, False, False, False, True, True]])
    ids = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2]])
    out = tail_softmax_attention(q, k, v, None, ids, keep)  # queries 4, 5: document 2, whose keys so far are padding
    assert out[0, :, :2].abs().max() == 0 and out[0, :, 2:].abs().min() > 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad[0, :, :2].abs().max() == 0
    assert k.grad[0, :, :6].abs().max() == 0  # document 1 is nobody's here, 3..5 are padding


def test_plan_is_tiles_of_at_most_s_by_s_and_one_per_document_piece():
    s, world = 8, 4
    docs = torch.tensor([[1] * 5 + [2] * 20 + [3] * 3 + [4] * 4])  # 2 spans ranks 0-3, 4 is rank 3's tail
    tiles = softmax_plan.plan(1, s, s * world, docs)
    assert all(t.q1 - t.q0 <= s and t.k1 - t.k0 <= s for t in tiles) and not any(t.masked for t in tiles)
    # rank 3's queries: doc 2's last token (over its 3 pieces on ranks 0-2, and itself), doc 3, doc 4
    assert len(tiles) == 3 + 1 + 1 + 1 and not softmax_plan.keys_shared(tiles)
    assert len(softmax_plan.plan(1, s, s * world)) == world
    keep = torch.ones(1, s * world, dtype=torch.bool)
    keep[0, 26] = False  # a padded key inside doc 3: doc 3's queries see key 25, then 27 after it
    padded = softmax_plan.plan(1, s, s * world, docs, keep)
    assert [(t.q0, t.q1, t.k0, t.k1, t.causal) for t in padded if t.k0 >= 25] == [
        (1, 2, 25, 26, True), (2, 4, 25, 26, False), (3, 4, 27, 28, True), (4, 8, 28, 32, True)]
    masked = softmax_plan.plan(1, s, s * world, docs, max_tiles=1)
    assert [t.k0 for t in masked] == [0, 8, 16, 24]  # doc 2 reaches back to rank 0: no block is skipped
    alone = torch.tensor([[1] * 24 + [2] * 8])
    assert [t.k0 for t in softmax_plan.plan(1, s, s * world, alone, max_tiles=1)] == [24]


@pytest.mark.parametrize("docs", [False, True], ids=["plain", "docs"])
def test_opcheck(docs):
    q, k, v = (x.detach().requires_grad_() for x in _inputs(1, 2, 1, 3, 9, 4, 4, seed=3))
    ids = torch.tensor([[1, 1, 2, 2, 2, 2, 2, 3, 3]]) if docs else None
    keep = torch.tensor([[True] * 4 + [False] + [True] * 4]) if docs else None
    args = (q, k, v, ids, keep, 0.5, softmax_plan.MAX_TILES)
    torch.library.opcheck(torch.ops.lasp_fx.tail_softmax_attention.default, args)


def test_bad_inputs_are_named():
    q, k, v = _inputs(1, 3, 2, 4, 8, 4, 4, seed=0)
    with pytest.raises(ValueError, match="kv heads must divide"):
        tail_softmax_attention(q, k, v)
    q, k, v = _inputs(1, 2, 2, 4, 8, 4, 4, seed=0)
    with pytest.raises(ValueError, match="integer ids of the keys' positions"):
        tail_softmax_attention(q, k, v, docs=torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="booleans of the keys' positions"):
        tail_softmax_attention(q, k, v, keep=torch.ones(1, 8))
    with pytest.raises(ValueError, match="at least as many keys"):
        tail_softmax_attention(q, k[:, :, :3], v[:, :, :3])


def test_hybrid_through_parallelize_compiled():
    # aot_eager (the CPU default) traces the tail op as one opaque node; 22 tokens: 11 per rank
    ids, labels = workers_parallel.lm_batch(2, 22, 64, seed=7)
    case = dict(model="examples.models:HybridLM", ids=ids, labels=labels, options={"compiler": "aot_eager"},
                device="cpu")
    ref = workers_parallel.single(case)
    results = run_spawned(workers_parallel.parallel, 2, [case], timeout=600)
    for rank, (got,) in enumerate(results):
        assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, f"rank {rank}"
        assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-10, f"rank {rank}"
        for p, g in ref["grads"].items():
            assert rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g)) <= 1e-10, f"rank {rank}: {p}"
