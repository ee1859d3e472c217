"""Third-party implementations (issue 20): inspect finds what the corpus table says, and
parallelize() over 2 gloo ranks equals one process or raises a lasp_fx error naming the line."""

import importlib.util

import pytest
import torch

import lasp_fx
from lasp_fx.capture import CaptureError
from tests.helpers import workers_parallel
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import run_spawned
from tests.third_party.corpus import THIRD_PARTY
from tests.third_party.worker import verdicts

T, WORLD = 24, 2
NAMES = list(THIRD_PARTY)


def _available(name):
    return importlib.util.find_spec(THIRD_PARTY[name]["needs"]) is not None


def _case(name):
    e = THIRD_PARTY[name]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (2, T), generator=gen)
    labels = torch.randint(0, 32, (2, T), generator=gen)
    return dict(model=e["model"], kwargs=e["kwargs"], ids=ids, labels=labels, options={"compiler": "eager"},
                dtype=e.get("dtype", "float64"))


@pytest.mark.parametrize("name", NAMES)
def test_inspect_counts(name):
    if not _available(name):
        pytest.skip(f"{THIRD_PARTY[name]['needs']} not installed (pip install -e '.[test]')")
    case = _case(name)
    model = workers_parallel.build(case["model"], **case["kwargs"])
    if "capture_refused" in THIRD_PARTY[name]:
        with pytest.raises(CaptureError) as info:
            lasp_fx.inspect(model, case["ids"])
        for words in THIRD_PARTY[name]["capture_refused"]:
            assert words in str(info.value), info.value
        return
    report = lasp_fx.inspect(model, case["ids"])
    assert [m.family for m in report.matches] == THIRD_PARTY[name]["matches"], report
    assert bool(report.near_misses) == THIRD_PARTY[name]["near"], report
    for item in report.matches + report.near_misses:
        assert "lasp_fx" not in item.source and "/torch/" not in item.source, item


@pytest.fixture(scope="module")
def parallel_verdicts(request):
    # only the cases selected (pytest -k): the spawned ranks run every case they are given
    chosen = {item.callspec.params["name"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_parallel_equals_one_process_or_refuses_naming_the_line"}
    names = [n for n in NAMES if _available(n) and n in chosen]
    results = run_spawned(verdicts, WORLD, [_case(n) for n in names], timeout=1500)
    return {n: [results[r][i] for r in range(WORLD)] for i, n in enumerate(names)}


@pytest.mark.parametrize("name", NAMES)
def test_parallel_equals_one_process_or_refuses_naming_the_line(name, parallel_verdicts):
    if name not in parallel_verdicts:
        pytest.skip(f"{THIRD_PARTY[name]['needs']} not installed")
    kind, arg = THIRD_PARTY[name]["parallel"]
    per_rank = parallel_verdicts[name]
    if kind == "refused":
        for rank, v in enumerate(per_rank):
            assert "error" in v, f"{name} rank {rank}: expected a refusal naming {arg}, got a result"
            for words in (arg,) if isinstance(arg, str) else arg:
                assert words in v["error"], f"{name} rank {rank}: {v['error']}"
            for internal in ("TypeError", "KeyError", "IndexError", "AttributeError"):
                assert not v["error"].startswith(internal), f"{name}: an internal error, not a verdict: {v['error']}"
        return
    _check_equal(name, per_rank, arg)


# rewrites that place something at global positions (torchscale's row scale): every rank's offset
@pytest.mark.parametrize("name", ["torchscale_retnet"])
def test_three_ranks_equal_one_process(name):
    if not _available(name):
        pytest.skip(f"{THIRD_PARTY[name]['needs']} not installed")
    results = run_spawned(verdicts, 3, [_case(name)], timeout=900)
    _check_equal(name, [per_rank[0] for per_rank in results], THIRD_PARTY[name]["parallel"][1])


def _check_equal(name, per_rank, tol):
    ref = workers_parallel.single(_case(name))
    for rank, v in enumerate(per_rank):
        where = f"{name} rank {rank}/{len(per_rank)}"
        assert "result" in v, f"{where}: {v.get('error')}"
        got = v["result"]
        assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= tol, where
        assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= tol, where
        assert set(got["grads"]) == set(ref["grads"]), where
        for p, g in ref["grads"].items():
            err = rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g))
            assert err <= tol, f"{where}: gradient of {p} off by {err:.2e}"
