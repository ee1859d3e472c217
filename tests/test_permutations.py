"""Tokens permuted within a rank (MoE routing) under parallelize(): the forms that sort the pairs and
put them back equal one process on every rank, outputs and every gradient; the forms that break
position-wise routing are refused at their line, with the reason."""

import functools

import pytest
import torch

from lasp_fx.distributed.spawn import run_spawned
from lasp_fx.numerics import rel_rms
from tests.helpers import workers_parallel
from tests.third_party.worker import verdicts

T = 24
EXACT = ["argsort_copy", "sort_put", "sort_inverse_gather"]
REFUSED = {  # route -> words the error must contain (the line's code and the reason)
    "capacity": ("aten.cumsum.default", "slot = torch.cumsum(F.one_hot(sorted_experts", "rows that are in permuted order"),
    "not_put_back": ("return self._expert(flat[perm // TOP_K], sorted_experts) * weights",
                     "combines rows in two different orders"),
    "positions_as_values": ("perm.to(flat.dtype)", "positions or group counts of a permutation as values"),
    "histc_drops_keys": ("torch.histc(sorted_experts", "may leave keys out"),
}


def _case(route):
    ids, labels = workers_parallel.lm_batch(2, T, 32)
    labels = labels.clamp(min=0)
    return dict(model="tests.helpers.moe_models:MoELM", kwargs={"route": route}, ids=ids, labels=labels,
                options={"compiler": "eager"})


@functools.cache
def _reference(route):
    return workers_parallel.single(_case(route))


@pytest.mark.parametrize("world_size", [2, 3], ids=lambda p: f"P{p}")
def test_routes_put_back_equal_one_process_and_broken_routes_are_refused(world_size):
    routes = EXACT + (list(REFUSED) if world_size == 2 else [])
    results = run_spawned(verdicts, world_size, [_case(r) for r in routes], timeout=900)
    for rank, per_rank in enumerate(results):
        for route, v in zip(routes, per_rank):
            where = f"{route} rank {rank}/{world_size}"
            if route in REFUSED:
                assert "error" in v, f"{where}: expected a refusal, got a result"
                assert v["error"].startswith("ShardError"), f"{where}: {v['error']}"
                for words in REFUSED[route]:
                    assert words in v["error"], f"{where}: {v['error']}"
                continue
            assert "result" in v, f"{where}: {v.get('error')}"
            got, ref = v["result"], _reference(route)
            assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, where
            assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-10, where
            assert set(got["grads"]) == set(ref["grads"]), where
            for p, g in ref["grads"].items():
                err = rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g))
                assert err <= 1e-10, f"{where}: gradient of {p} off by {err:.2e}"
