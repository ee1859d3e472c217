"""parallelize() on gloo ranks: every example model computes the single-process function, gradients included."""

import pytest
import torch

from lasp_fx.testing import workers_parallel
from lasp_fx.testing.numerics import rel_rms
from lasp_fx.testing.spawn import run_spawned

EXAMPLES = ["LightningLM", "RetNetLM", "LinearLM", "GatedLM", "HybridLM"]
RULE_MODELS = ["DirectOpLM", "PooledRegressor"]
T = 24  # divisible by 2, 3 and 4; 12, 8 and 6 tokens per rank: every slice ends mid-chunk


def _batch(vocab=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, T), generator=gen)
    labels = torch.randint(0, vocab, (4, T), generator=gen)
    labels[0, :5] = -100  # ignored labels change the loss's count, not only its sum
    labels[3, 17] = -100
    return ids, labels


def _case(name, module="examples.models", **extra):
    ids, labels = _batch()
    return dict(model=f"{module}:{name}", ids=ids, labels=labels, options={"compiler": "eager"}, **extra)


def _cases():
    return [_case(n) for n in EXAMPLES] + [_case(n, module="lasp_fx.testing.models") for n in RULE_MODELS]


def _check(parallel, reference, tol, name):
    assert rel_rms(torch.as_tensor(parallel["logits"]), torch.as_tensor(reference["logits"])) <= tol, f"{name} logits"
    assert rel_rms(torch.as_tensor(parallel["loss"]), torch.as_tensor(reference["loss"])) <= tol, f"{name} loss"
    assert set(parallel["grads"]) == set(reference["grads"]), f"{name}: different parameters got gradients"
    for p, g in reference["grads"].items():
        err = rel_rms(torch.as_tensor(parallel["grads"][p]), torch.as_tensor(g))
        assert err <= tol, f"{name}: gradient of {p} off by {err:.2e}"


@pytest.fixture(scope="module")
def references():
    return {c["model"]: workers_parallel.single(c) for c in _cases()}


@pytest.mark.parametrize("world_size", [2, 3, 4], ids=lambda p: f"P{p}")
def test_every_model_matches_one_process(world_size, references):
    cases = _cases()
    results = run_spawned(workers_parallel.parallel, world_size, cases, timeout=900)
    for rank, per_rank in enumerate(results):
        for case, got in zip(cases, per_rank):
            _check(got, references[case["model"]], 1e-10, f"{case['model']} rank {rank}/{world_size}")


def test_float32_losses_of_20_steps_match():
    cases = [_case(n, dtype="float32", steps=20) for n in ("LightningLM", "GatedLM")]
    results = run_spawned(workers_parallel.parallel, 2, cases, timeout=900)
    refs = [workers_parallel.single(case) for case in cases]
    for rank, per_rank in enumerate(results):
        for case, ref, got in zip(cases, refs, per_rank):
            assert len(got["losses"]) == 20
            assert ref["losses"][-1] < ref["losses"][0]  # it trains
            for step, (a, b) in enumerate(zip(got["losses"], ref["losses"])):
                assert abs(a - b) <= 1e-4 * abs(b), f"{case['model']} rank {rank} step {step}: {a} vs {b}"
            _check(got, ref, 1e-5, f"{case['model']} rank {rank} (float32)")


def test_2d_mesh_with_ddp_or_fsdp_over_dp():
    # dp=2 x sp=2: each data-parallel pair splits its half of the batch's sequences; DDP and FSDP2
    # average over dp, so the gradients are those of the mean loss over the two halves.
    cases = [dict(_case("RetNetLM"), mesh="dp,sp"), dict(_case("HybridLM"), mesh="dp,sp", data_parallel="fsdp")]
    results = run_spawned(workers_parallel.parallel, 4, cases, timeout=900)
    for c, case in enumerate(cases):
        halves = [workers_parallel.single(dict(case, ids=case["ids"][i:i + 2], labels=case["labels"][i:i + 2]))
                  for i in (0, 2)]
        mean_grads = {p: (torch.as_tensor(halves[0]["grads"][p]) + torch.as_tensor(halves[1]["grads"][p])) / 2
                      for p in halves[0]["grads"]}
        for rank, per_rank in enumerate(results):  # mesh (2, 2): ranks 0, 1 hold dp row 0, ranks 2, 3 row 1
            got, half = per_rank[c], halves[rank // 2]
            for p, g in mean_grads.items():
                err = rel_rms(torch.as_tensor(got["grads"][p]), g)
                assert err <= 1e-10, f"{case['model']} rank {rank}: gradient of {p} off by {err:.2e}"
            assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(half["logits"])) <= 1e-10, f"rank {rank}"
            assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(half["loss"])) <= 1e-10, f"rank {rank}"


def test_local_slices_and_dtensor_inputs():
    # every rank passes only its slice (shard_batch), or DTensors sharded on the sequence
    cases = [dict(_case("LightningLM"), options={"compiler": "eager", "inputs": "local"}),
             dict(_case("RetNetLM"), dtensor_inputs=True)]
    results = run_spawned(workers_parallel.parallel, 3, cases, timeout=900)
    for rank, per_rank in enumerate(results):
        for case, got in zip(cases, per_rank):
            _check(got, workers_parallel.single(case), 1e-10, f"{case['model']} rank {rank}")


def test_aot_eager_compiler_and_activation_checkpointing():
    cases = [dict(_case("GatedLM"), options={"compiler": "aot_eager"}),
             dict(_case("CheckpointedLM", module="lasp_fx.testing.models"), options={"compiler": "aot_eager"})]
    results = run_spawned(workers_parallel.parallel, 2, cases, timeout=900)
    for case in cases:
        ref = workers_parallel.single(case)
        for rank, per_rank in enumerate(results):
            _check(per_rank[cases.index(case)], ref, 1e-10, f"{case['model']} aot_eager rank {rank}")


REFUSED = {
    "CumsumMixer": r"ShardError: aten.cumsum.default at .*testing/models.py:\d+ \(return torch.cumsum\(x, dim=1\)\): reduces over the sequence",
    "LengthAsNumber": r"ShardError: aten.div.Tensor at .*models.py:\d+ .*uses the sequence length as a number",
    "NonCausalConv": r"ShardError: aten.conv1d.default at .*models.py:\d+ .*sees future positions",
}


def test_unsupported_position_mixing_is_refused_with_its_source_line():
    import re

    cases = [_case(n, module="lasp_fx.testing.models") for n in REFUSED]
    cases.append(dict(_case("LightningLM"), ids=torch.zeros(2, 25, dtype=torch.long)))  # 25 % 2 != 0
    messages = run_spawned(workers_parallel.parallel_errors, 2, cases, timeout=600)
    for rank_messages in messages:
        for pattern, message in zip(REFUSED.values(), rank_messages):
            assert message is not None and re.search(pattern, message), message
        assert "not divisible by the 2 sequence-parallel ranks" in rank_messages[-1]
