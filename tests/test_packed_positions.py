"""Packed rows marked by position_ids restarting per document (HF's DataCollatorWithFlattening) under
parallelize(): every rank equals each document run alone in one process, and the softmax masks of
documents lasp_fx cannot shard are refused at their line."""

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lasp_fx.distributed.spawn import run_spawned
from lasp_fx.passes.shard import documents, padding_masks
from lasp_fx.passes.shard.rules import ShardError
from tests.helpers import workers_packed_models
from tests.helpers.traced import traced

HAS_HF = importlib.util.find_spec("transformers") is not None
# Two rows of 24 tokens (slices of 24, 12 and 8): documents of 1 token, documents starting exactly at the
# rank edges 8, 12 and 16, documents crossing them (12..21 over 16, 5..16 over 8 and 12).
CU = [[0, 1, 8, 12, 21, 24], [0, 5, 16, 17, 24]]
# Each P's models run in one spawn (compiling is most of the time). The examples call lasp_fx's op with
# document_ids from a cumsum of the positions (the cumsum over ranks, the label before each slice); the
# hybrid's and HF Llama's softmax layers build masks of documents (by hand; HF's masking_utils). HF
# MiniMax's softmax layers take HF's packed mask, but its lightning layers run over the whole row (HF's
# own function, not each document alone): it is compared with itself on the packed rows in one process,
# in float32 (torch's CPU grouped_mm, which its experts call, has no float64 kernel).
PLAN = {
    1: ["hybrid", "hf_llama"],
    2: ["lightning", "hybrid", "gated", "hf_llama", "hf_minimax"],
    3: ["retnet", "linear", "hybrid", "gated", "hf_llama"],
}
OPTIONS = {(3, "hybrid"): {"compiler": "aot_eager"}}  # the others "eager": the same passes, less compile time
REFERENCE = {"hf_minimax": "packed"}
TOL = {"hf_minimax": 1e-5}


@functools.cache
def _parallel(world_size: int) -> list:
    cases = [dict(model=m, cu=CU, options=OPTIONS.get((world_size, m), {"compiler": "eager"}),
                  reference=REFERENCE.get(m, "alone")) for m in _runnable(PLAN[world_size])]
    return run_spawned(workers_packed_models.packed_vs_alone, world_size, cases, timeout=1200)


def _runnable(models):
    return [m for m in models if HAS_HF or not m.startswith("hf_")]


@pytest.mark.parametrize("model, world_size", [pytest.param(m, p, id=f"{m}-P{p}") for p, ms in PLAN.items() for m in ms])
def test_packed_rows_equal_each_document_alone(model, world_size):
    """Logits of all ranks and every parameter gradient on every rank, float64, against each document alone."""
    if model.startswith("hf_"):
        pytest.importorskip("transformers")
    index, tol = _runnable(PLAN[world_size]).index(model), TOL.get(model, 1e-12)
    bad = {rank: {n: e for n, e in r[index].items() if not e < tol} for rank, r in enumerate(_parallel(world_size))}
    assert not any(bad.values()), bad


def test_packing_changes_the_reference():
    # the comparison above can fail: a model that ignored the documents would compute this instead
    from lasp_fx.numerics import rel_rms

    model = workers_packed_models.build("hybrid")
    ids = torch.randint(0, 32, (2, 24), generator=torch.Generator().manual_seed(5))
    packed = model(ids, position_ids=workers_packed_models.positions(CU))
    assert rel_rms(packed, model(ids)) > 1e-3


# ------------------------------------------------------------------------------ which masks are recognised
def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def _same(docs):
    return docs[:, None, :, None] == docs[:, None, None, :]


def _runs_by_hand(labels):  # a document per maximal run of one label
    return torch.cumsum(torch.cat([torch.zeros_like(labels[:, :1]), (labels[:, 1:] != labels[:, :-1]).long()], 1), 1)


def _hf_mask(pos, n):
    from transformers import masking_utils as hf

    packed = hf.find_packed_sequence_indices(pos)
    mask_function = hf.and_masks(hf.remap_positions_for_packed_sequence(hf.causal_mask_function, pos),
                                 hf.packed_sequence_mask_function(packed))
    return hf.sdpa_mask(batch_size=pos.shape[0], q_length=n, kv_length=n, allow_is_causal_skip=False,
                        mask_function=mask_function)


MASKS = {  # position_ids or labels [B, n] -> an SDPA mask; the rule it is recognised under, or None: refused
    "restart_by_hand": (lambda p, n: _causal(n) & _same(torch.cumsum(p == 0, 1)), "restart"),
    "hf_masking_utils": (lambda p, n: _hf_mask(p, n), "consecutive"),
    "runs_of_labels": (lambda p, n: _causal(n) & _same(_runs_by_hand(p)), "labels"),
    "equal_labels": (lambda p, n: _causal(n) & _same(p), None),  # [1, 2, 1]: the 1s are one document here
    "restart_window": (lambda p, n: _causal(n).triu(-3) & _same(torch.cumsum(p == 0, 1)), None),
    "restart_bidirectional": (lambda p, n: _same(torch.cumsum(p == 0, 1)), None),
    "restart_and_one_more_key": (lambda p, n: _causal(n) & (_same(torch.cumsum(p == 0, 1)) | (p == 3)[:, None, None, :]),
                                 None),
}


def _attention(x, pos, spell):
    q, k, v = x.unflatten(-1, (3, -1)).permute(2, 0, 1, 3).unsqueeze(2)  # each [B, 1, n, D/3]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=spell(pos, x.shape[1]))


@pytest.mark.parametrize("spelling", list(MASKS))
def test_mask_spellings(spelling):
    spell, rule = MASKS[spelling]
    if spelling.startswith("hf_"):
        pytest.importorskip("transformers")
    x = torch.randn(2, 11, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([[0, 1, 2, 0, 0, 1, 2, 3, 0, 1, 2], [4, 5, 0, 1, 2, 3, 4, 5, 6, 0, 1]])
    graph, symbols, inputs = traced(lambda x, p: _attention(x, p, spell), x, pos)
    documents.document_masks_pass(graph, symbols)
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    if rule is None:
        assert documents.document_causal_attention not in targets
        with pytest.raises(ShardError, match=r"scaled_dot_product_attention.* at .*test_packed_positions.py:\d+.*"
                                             r"mask \(built at .*(test_packed_positions|masking_utils).py:\d+"):
            padding_masks.padding_masks_pass(graph, symbols)
        return
    node = next(n for n in graph.graph.nodes if n.target is documents.document_causal_attention)
    assert node.args[4] == rule and torch.ops.aten.scaled_dot_product_attention.default not in targets
    got = graph(*inputs)
    assert torch.equal(got[0] if isinstance(got, (tuple, list)) else got, _attention(x, pos, spell))
