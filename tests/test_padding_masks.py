"""Padded batches under parallelize(): the tokenizer's attention_mask gives the single-process function on
every rank (outputs, loss and every gradient), and masks lasp_fx cannot shard are refused at their line."""

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from lasp_fx.passes.shard import padding_masks
from lasp_fx.passes.shard.rules import ShardError
from tests.helpers import workers_parallel
from tests.helpers.traced import traced
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import run_spawned

T = 24  # 24, 12, 8, 6 tokens a rank: padding starts mid-slice, crosses ranks, fills whole slices
MODELS = {  # id -> (model, kwargs, float32 loss: HF computes its loss on float32 logits)
    "hf_llama": ("tests.helpers.models:HFLlama", {}, True),
    "example_hybrid": ("tests.helpers.padded_models:PaddedLM", {"name": "hybrid"}, False),
    "example_gated": ("tests.helpers.padded_models:PaddedLM", {"name": "gated", "masked_loss": True}, False),
}
HAS_HF = importlib.util.find_spec("transformers") is not None
KINDS = ("ones", "right", "left")


def _mask(kind: str, rows: int = 2) -> torch.Tensor:
    mask = torch.ones(rows, T, dtype=torch.long)
    if kind == "right":  # row 0 padded from mid-slice on; at P = 4 the last rank holds only padding
        mask[0, 17:], mask[1, T - 2:] = 0, 0
    elif kind == "left":  # row 0's first 9 tokens: the whole first slice at P = 4, part of the next
        mask[0, :9], mask[1, :1] = 0, 0
    return mask


def _case(model_id: str, kind: str, inputs: str = "full") -> dict:
    model, kwargs, _ = MODELS[model_id]
    ids, labels = workers_parallel.lm_batch(2, T, 32, seed=1)
    mask = _mask(kind)
    # what a data collator does: padding gets label -100, so the loss counts real tokens only
    return dict(model=model, kwargs=kwargs, ids=ids, labels=labels.masked_fill(mask == 0, -100), mask=mask,
                options={"compiler": "eager", "inputs": inputs}, device="cpu")


# Every model meets every mask kind, every P >= 2 every kind and every model (a rotation: one spawn per
# P, three cases in it, keeps the CPU time small); P = 1, a group of one, runs one case. At P = 3 every
# rank passes only its slice of the ids, labels and mask (lasp_fx.shard_batch, inputs="local").
PLAN = {1: [("hf_llama", "left")]}
PLAN.update({p: [(m, KINDS[(p + i) % 3]) for i, m in enumerate(MODELS)] for p in (2, 3, 4)})
INPUTS = {3: "local"}


@functools.cache
def _parallel(world_size: int) -> list:
    """The plan's cases for `world_size` gloo ranks, in one spawn: [rank][case]."""
    cases = [_case(m, k, INPUTS.get(world_size, "full")) for m, k in _runnable(PLAN[world_size])]
    return run_spawned(workers_parallel.parallel, world_size, cases, timeout=1200)


def _runnable(cases):
    return [(m, k) for m, k in cases if HAS_HF or not m.startswith("hf_")]


@functools.cache
def _single(model_id: str, kind: str) -> dict:
    return workers_parallel.single(_case(model_id, kind))


@pytest.mark.parametrize("model_id, kind, world_size",
                         [pytest.param(m, k, p, id=f"{m}-{k}-P{p}" + ("-local" if p in INPUTS else ""))
                          for p, cases in PLAN.items() for m, k in cases])
def test_padded_batch_matches_one_process(model_id, kind, world_size):
    if model_id.startswith("hf_"):
        pytest.importorskip("transformers")
    ref = _single(model_id, kind)
    tol = 1e-6 if MODELS[model_id][2] else 1e-10  # HF's float32 loss: float32 rounding in the loss and gradients
    failures = []
    for rank, per_rank in enumerate(_parallel(world_size)):
        got = per_rank[_runnable(PLAN[world_size]).index((model_id, kind))]
        if set(got["grads"]) != set(ref["grads"]):
            odd = sorted(set(got["grads"]) ^ set(ref["grads"]))
            failures.append(f"rank {rank}: gradients of {odd} exist on one side only")
        pairs = {"logits": (got["logits"], ref["logits"]), "loss": (got["loss"], ref["loss"]),
                 **{f"grad {p}": (got["grads"][p], g) for p, g in ref["grads"].items() if p in got["grads"]}}
        for what, (a, b) in pairs.items():
            err = rel_rms(torch.as_tensor(a), torch.as_tensor(b))
            if not err <= tol:
                failures.append(f"rank {rank}: {what} off by {err:.2e}")
    assert not failures, f"{model_id} {kind} P={world_size}:\n" + "\n".join(failures)


@pytest.mark.parametrize("kind", ["right", "left"])
@pytest.mark.parametrize("model_id", list(MODELS))
def test_the_mask_changes_the_reference(model_id, kind):
    # the comparison above can fail: a parallel model that dropped the mask would compute this
    if model_id.startswith("hf_"):
        pytest.importorskip("transformers")
    masked = _single(model_id, kind)
    unmasked = workers_parallel.single({**_case(model_id, kind), "mask": None})
    assert rel_rms(torch.as_tensor(masked["logits"]), torch.as_tensor(unmasked["logits"])) > 1e-3


# ------------------------------------------------------------------------------ which masks are recognised
def _causal(n, device):
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


MASKS = {  # flags [B, n] (1 token, 0 padding) -> an SDPA mask; True: causal AND the keys' padding
    "tril_and_index": (lambda f, n: _causal(n, f.device) & f.bool()[:, None, None, :], True),
    "aranges": (lambda f, n: (torch.arange(n)[None, :] <= torch.arange(n)[:, None]) & (f != 0)[:, None, None, :], True),
    "tril_of_expanded": (lambda f, n: f.bool()[:, None, None, :].expand(-1, 1, n, n).tril(), True),
    "hf_masking_utils": (lambda f, n: _hf_mask(f, n), True),
    "queries_too": (lambda f, n: _causal(n, f.device) & f.bool()[:, None, None, :] & f.bool()[:, None, :, None], False),
    "sliding_window": (lambda f, n: _causal(n, f.device).triu(-3) & f.bool()[:, None, None, :], False),
    "wide_window": (lambda f, n: _causal(n, f.device).triu(-40) & f.bool()[:, None, None, :], False),  # 41 > probes
    "hf_sliding_window": (lambda f, n: _hf_mask(f, n, window=50), False),
    "bidirectional": (lambda f, n: f.bool()[:, None, None, :].expand(-1, 1, n, n), False),
    "equals_one": (lambda f, n: _causal(n, f.device) & (f == 1)[:, None, None, :], True),  # the model's own flags
    "bool_after_broadcast": (lambda f, n: _causal(n, f.device) & f[:, None, None, :].bool(), True),
    "equals_one_after_broadcast": (lambda f, n: _causal(n, f.device) & (f[:, None, None, :] == 1), False),  # 2: pad?
    "additive_float": (lambda f, n: torch.zeros(n, n).masked_fill(~(_causal(n, f.device) & f.bool()[:, None, None, :]),
                                                                   float("-inf")), False),
}


def _hf_mask(flags, n, window=None):
    from transformers import masking_utils as hf

    causal = hf.causal_mask_function if window is None else hf.sliding_window_causal_mask_function(window)
    return hf.sdpa_mask(batch_size=flags.shape[0], q_length=n, kv_length=n, allow_is_causal_skip=False,
                        mask_function=hf.and_masks(causal, hf.padding_mask_function(flags.bool())))


def _attention(x, flags, spell):
    q, k, v = x.unflatten(-1, (3, -1)).permute(2, 0, 1, 3).unsqueeze(2)  # each [B, 1, n, D/3]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=spell(flags, x.shape[1]))


@pytest.mark.parametrize("spelling", list(MASKS))
def test_mask_spellings(spelling):
    spell, recognised = MASKS[spelling]
    if spelling.startswith("hf_"):
        pytest.importorskip("transformers")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 12, dtype=torch.float64, generator=gen)
    flags = torch.ones(3, 10, dtype=torch.long)
    flags[0, :4], flags[1, 7:], flags[2, 2], flags[2, 5] = 0, 0, 0, 2  # a 2 is what the model makes of it
    graph, symbols, inputs = traced(lambda x, f: _attention(x, f, spell), x, flags)
    if not recognised:
        with pytest.raises(ShardError, match=r"scaled_dot_product_attention.* at .*test_padding_masks.py:\d+.*"
                                             r"mask \(built at .*test_padding_masks.py:\d+"):
            padding_masks.padding_masks_pass(graph, symbols)
        return
    want = _attention(x, flags, spell)
    padding_masks.padding_masks_pass(graph, symbols)
    targets = [n.target for n in graph.graph.nodes if n.op == "call_function"]
    assert padding_masks.padded_causal_attention in targets
    assert torch.ops.aten.scaled_dot_product_attention.default not in targets
    got = graph(*inputs)
    assert torch.equal(got[0] if isinstance(got, (tuple, list)) else got, want)  # the same function on one device


def test_an_all_ones_mask_plans_like_no_mask():
    # the softmax layers' tiles: no per-row tiles (one launch per row) when no key is padding
    from lasp_fx.ops import softmax_plan

    s, world = 6, 4
    ones = torch.ones(3, s * world, dtype=torch.bool)
    assert softmax_plan.plan(3, s, s * world, None, ones) == softmax_plan.plan(3, s, s * world)
    ones[1, 4] = False
    assert softmax_plan.plan(3, s, s * world, None, ones) != softmax_plan.plan(3, s, s * world)


@pytest.mark.parametrize("window", [5, 100], ids=lambda w: f"window{w}")
def test_length_only_windows_are_refused(window):
    # a window wider than the replay's short lengths is the causal mask there: it is replayed past it too
    from lasp_fx.passes.shard.causal_masks import causal_masks_pass

    x = torch.randn(2, 10, 12, dtype=torch.float64)
    graph, symbols, _ = traced(lambda x: _attention(x, None, lambda f, n: _causal(n, x.device).triu(1 - window)), x)
    with pytest.raises(ShardError, match=r"mask \(built at .*test_padding_masks.py:\d+.*\) is causal on short "
                                         r"sequences but not at \d+ tokens: a sliding window"):
        causal_masks_pass(graph, symbols)
