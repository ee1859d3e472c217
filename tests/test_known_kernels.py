"""Family 7: calls of fla's and lasp's kernels are traced as the lasp_fx op, computing their function."""

import pytest
import torch

from tests.helpers import kernel_models, workers_parallel
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import run_spawned

pytest.importorskip("fla")
pytest.importorskip("lasp")

MODELS = {
    "simple_gla": (kernel_models.FlaSimpleGLA, "gate"),
    "retention": (kernel_models.FlaRetention, "const"),
    "linear_attn": (kernel_models.FlaLinearAttn, "none"),
    "lightning": (kernel_models.LaspLightning, "const"),
}


@pytest.mark.parametrize("cls,decay", MODELS.values(), ids=MODELS.keys())
def test_kernel_call_is_one_op_with_the_kernels_function(cls, decay):
    from lasp_fx.capture import capture
    from lasp_fx.passes import convert_captured

    torch.manual_seed(0)
    model, reference = cls(), cls(reference=True)
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 32, (2, 37))
    captured = capture(model, ids, method="dynamo")
    gm, report = convert_captured(captured)
    assert [m.family for m in report.matches] == ["kernel call"] and report.matches[0].decay == decay
    ops = [n for n in gm.graph.nodes if n.target is torch.ops.lasp_fx.linear_attention.default]
    assert len(ops) == 1  # the normalised form too: one call with v extended by a column of ones
    out = gm(*captured.example_inputs)[0]
    err = rel_rms(out, reference(ids))
    assert err <= 2e-5, f"{cls.__name__}: {err:.2e}"  # fla's references compute in float32


def test_kernel_model_trains_sequence_parallel():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (2, 24), generator=gen)
    case = dict(model="tests.helpers.kernel_models:FlaSimpleGLA", ids=ids, labels=ids.clone(),
                options={"compiler": "eager"})
    reference = workers_parallel.single(dict(case, kwargs={"reference": True}))
    for rank, (got,) in enumerate(run_spawned(workers_parallel.parallel, 2, [case], timeout=600)):
        assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(reference["logits"])) <= 1e-5, f"rank {rank}"
        for name, g in reference["grads"].items():
            assert rel_rms(torch.as_tensor(got["grads"][name]), torch.as_tensor(g)) <= 1e-4, f"rank {rank}: {name}"
