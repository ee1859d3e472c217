"""Short causal convolutions before linear attention (fla's `use_short_conv`, HF's conv1d[..., :T],
F.pad + conv): parallelize() over P gloo ranks equals one process, every rank, logits and every
gradient in float64; each conv reads the tokens before its slice from the earlier ranks."""

import functools

import pytest
import torch

import lasp_fx
from lasp_fx.distributed.spawn import run_spawned
from lasp_fx.numerics import rel_rms
from tests.helpers import workers_parallel

pytest.importorskip("transformers")

T = 24  # 12 and 8 tokens a rank
FORMS = {
    "hf_fused_k4": {"form": "hf"},  # transformers' own causal_conv1d_fn over the fused qkv
    "pad_per_qkv_k3_dilated": {"form": "pad", "fused": False, "kernel": 3, "dilation": 2},
    "slice_k10": {"form": "slice", "kernel": 10},  # reach 9 > 8 tokens at P = 3: the halo spans two ranks
}


def _case(kwargs):
    ids, labels = workers_parallel.lm_batch(2, T, 32)
    return dict(model="tests.third_party.short_conv:ShortConvLM", kwargs=kwargs, ids=ids, labels=labels,
                options={"compiler": "eager"})


@functools.cache
def _reference(name):
    return workers_parallel.single(_case(FORMS[name]))


@pytest.mark.parametrize("name", FORMS)
def test_inspect_finds_the_attention_after_the_conv(name):
    case = _case(FORMS[name])
    model = workers_parallel.build(case["model"], **case["kwargs"])
    report = lasp_fx.inspect(model, case["ids"])
    assert [m.family for m in report.matches] == ["decay-mask"], report


@pytest.mark.parametrize("world_size", [2, 3], ids=lambda p: f"P{p}")
def test_parallel_equals_one_process(world_size):
    results = run_spawned(workers_parallel.parallel, world_size, [_case(k) for k in FORMS.values()], timeout=900)
    for rank, per_rank in enumerate(results):
        for name, got in zip(FORMS, per_rank):
            ref, where = _reference(name), f"{name} rank {rank}/{world_size}"
            assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, where
            assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-10, where
            assert set(got["grads"]) == set(ref["grads"]), where
            for p, g in ref["grads"].items():
                err = rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g))
                assert err <= 1e-10, f"{where}: gradient of {p} off by {err:.2e}"
