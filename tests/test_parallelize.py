"""parallelize() on spawned ranks (gloo on the CPU, NCCL on GPUs): every example model computes the
single-process function, gradients included, on every rank."""

import functools

import pytest
import torch

from tests.helpers import workers_parallel
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import device_worlds, run_spawned

EXAMPLES = ["LightningLM", "RetNetLM", "LinearLM", "GatedLM", "HybridLM"]
RULE_MODELS = ["DirectOpLM", "PooledRegressor"]
T = 24  # divisible by 2, 3 and 4; 12, 8 and 6 tokens per rank: every slice ends mid-chunk


def _batch(vocab=32, seed=0):
    return workers_parallel.lm_batch(4, T, vocab, seed)


def _case(name, device, module="examples.models", **extra):
    ids, labels = _batch()
    return dict(model=f"{module}:{name}", ids=ids, labels=labels, options={"compiler": "eager"}, device=device,
                **extra)


def _cases(device):
    return ([_case(n, device) for n in EXAMPLES]
            + [_case(n, device, module="tests.helpers.models") for n in RULE_MODELS])


def _check(parallel, reference, tol, name):
    assert rel_rms(torch.as_tensor(parallel["logits"]), torch.as_tensor(reference["logits"])) <= tol, f"{name} logits"
    assert rel_rms(torch.as_tensor(parallel["loss"]), torch.as_tensor(reference["loss"])) <= tol, f"{name} loss"
    assert set(parallel["grads"]) == set(reference["grads"]), f"{name}: different parameters got gradients"
    for p, g in reference["grads"].items():
        err = rel_rms(torch.as_tensor(parallel["grads"][p]), torch.as_tensor(g))
        assert err <= tol, f"{name}: gradient of {p} off by {err:.2e}"


@functools.cache
def _references(device):
    return {c["model"]: workers_parallel.single(c) for c in _cases(device)}


@pytest.mark.parametrize("device, world_size", device_worlds(2, 3, 4))
def test_every_model_matches_one_process(device, world_size):
    cases = _cases(device)
    results = run_spawned(workers_parallel.parallel, world_size, cases, device=device, timeout=900)
    for rank, per_rank in enumerate(results):
        for case, got in zip(cases, per_rank):
            _check(got, _references(device)[case["model"]], 1e-10, f"{case['model']} rank {rank}/{world_size}")


@pytest.mark.parametrize("device, world_size", device_worlds(2))
def test_float32_losses_of_20_steps_match(device, world_size):
    cases = [_case(n, device, dtype="float32", steps=20) for n in ("LightningLM", "GatedLM")]
    results = run_spawned(workers_parallel.parallel, world_size, cases, device=device, timeout=900)
    refs = [workers_parallel.single(case) for case in cases]
    for rank, per_rank in enumerate(results):
        for case, got, ref in zip(cases, per_rank, refs):
            assert len(got["losses"]) == 20
            assert ref["losses"][-1] < ref["losses"][0]  # it trains
            for step, (a, b) in enumerate(zip(got["losses"], ref["losses"])):
                assert abs(a - b) <= 1e-4 * abs(b), f"{case['model']} rank {rank} step {step}: {a} vs {b}"
            _check(got, ref, 1e-5, f"{case['model']} rank {rank} (float32)")


@pytest.mark.parametrize("device, world_size", device_worlds(4, exact=True))
def test_2d_mesh_with_ddp_or_fsdp_over_dp(device, world_size):
    # dp=2 x sp=2: each data-parallel pair splits its half of the batch's sequences; DDP and FSDP2
    # average over dp, so the gradients are those of the mean loss over the two halves.
    cases = [dict(_case("RetNetLM", device), mesh="dp,sp"),
             dict(_case("HybridLM", device), mesh="dp,sp", data_parallel="fsdp")]
    results = run_spawned(workers_parallel.parallel, world_size, cases, device=device, timeout=900)
    for i, case in enumerate(cases):
        halves = [workers_parallel.single(dict(case, ids=case["ids"][j:j + 2], labels=case["labels"][j:j + 2]))
                  for j in (0, 2)]
        mean_grads = {p: (torch.as_tensor(halves[0]["grads"][p]) + torch.as_tensor(halves[1]["grads"][p])) / 2
                      for p in halves[0]["grads"]}
        for rank, per_rank in enumerate(results):  # ranks 0, 1 hold the first half's sequences, 2, 3 the second's
            got = per_rank[i]
            for p, g in mean_grads.items():
                err = rel_rms(torch.as_tensor(got["grads"][p]), g)
                assert err <= 1e-10, f"{case['model']} rank {rank}: gradient of {p} off by {err:.2e}"
            half = halves[rank // 2]
            assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(half["logits"])) <= 1e-10, f"rank {rank}"
            assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(half["loss"])) <= 1e-10, f"rank {rank}"


@pytest.mark.parametrize("device, world_size", device_worlds(3))
def test_local_slices_and_dtensor_inputs(device, world_size):
    # every rank passes only its slice (shard_batch), or DTensors sharded on the sequence
    cases = [dict(_case("LightningLM", device), options={"compiler": "eager", "inputs": "local"}),
             dict(_case("RetNetLM", device), dtensor_inputs=True)]
    results = run_spawned(workers_parallel.parallel, world_size, cases, device=device, timeout=900)
    refs = [workers_parallel.single(case) for case in cases]
    for rank, per_rank in enumerate(results):
        for case, got, ref in zip(cases, per_rank, refs):
            _check(got, ref, 1e-10, f"{case['model']} rank {rank}")


@pytest.mark.parametrize("device, world_size", device_worlds(2))
def test_aot_eager_compiler_and_activation_checkpointing(device, world_size):
    cases = [dict(_case("GatedLM", device), options={"compiler": "aot_eager"}),
             dict(_case("CheckpointedLM", device, module="tests.helpers.models"), options={"compiler": "aot_eager"})]
    results = run_spawned(workers_parallel.parallel, world_size, cases, device=device, timeout=900)
    refs = [workers_parallel.single(case) for case in cases]
    for rank, per_rank in enumerate(results):
        for case, got, ref in zip(cases, per_rank, refs):
            _check(got, ref, 1e-10, f"{case['model']} aot_eager rank {rank}")


REFUSED = {
    "CumsumMixer": r"ShardError: aten.cumsum.default at .*tests/helpers/models.py:\d+ \(return torch.cumsum\(x, dim=1\)\): reduces over the sequence",
    "LengthAsNumber": r"ShardError: aten.div.Tensor at .*models.py:\d+ .*uses the sequence length as a number",
    "NonCausalConv": r"ShardError: aten.conv1d.default at .*models.py:\d+ .*sees future positions",
}


@pytest.mark.parametrize("device, world_size", device_worlds(2))
def test_unsupported_position_mixing_is_refused_with_its_source_line(device, world_size):
    import re

    cases = [_case(n, device, module="tests.helpers.models") for n in REFUSED]
    cases.append(dict(_case("LightningLM", device), ids=torch.zeros(2, 25, dtype=torch.long)))  # 25 % 2 != 0
    messages = run_spawned(workers_parallel.parallel_errors, world_size, cases, device=device, timeout=600)
    for rank_messages in messages:
        if world_size == 1:  # one GPU: a group of one runs the model whole, with nothing to refuse
            assert rank_messages == [None] * len(cases), rank_messages
            continue
        for pattern, message in zip(REFUSED.values(), rank_messages):
            assert message is not None and re.search(pattern, message), message
        assert "not divisible by the 2 sequence-parallel ranks" in rank_messages[-1]
