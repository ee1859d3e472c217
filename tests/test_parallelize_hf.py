"""parallelize() on an unmodified HF transformers model, on every device: its mask, rotary tables and shifted loss."""

import pytest
import torch

from tests.helpers import workers_parallel
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import device_worlds, run_spawned

pytest.importorskip("transformers")


# Checkpointed decoder layers, HF's own way and parallelize's, under aot_eager (whose partitioner reads the
# regions); HF's kernels hub sets a context variable inside each layer, a side effect dynamo must be let skip.
@pytest.mark.parametrize("kwargs, options", [
    pytest.param({}, {"compiler": "eager"}, id="plain"),
    pytest.param({"gradient_checkpointing": True}, {"compiler": "aot_eager"}, id="hf-gradient-checkpointing"),
    pytest.param({}, {"compiler": "aot_eager", "checkpoint": "blocks"}, id="checkpoint-blocks"),
])
@pytest.mark.parametrize("device, world_size", device_worlds(2))
def test_hf_llama_matches_one_process(device, world_size, kwargs, options):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (2, 24), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100
    case = dict(model="tests.helpers.models:HFLlama", ids=ids, labels=labels, options=options, device=device,
                kwargs=kwargs)
    ref = workers_parallel.single(case)
    for rank, (got,) in enumerate(run_spawned(workers_parallel.parallel, world_size, [case], device=device,
                                              timeout=600)):
        assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, f"rank {rank}"
        # HF computes the loss on float32 logits: float32 rounding, whatever the model's dtype
        assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-6
        assert set(got["grads"]) == set(ref["grads"])
        for name, g in ref["grads"].items():
            assert rel_rms(torch.as_tensor(got["grads"][name]), torch.as_tensor(g)) <= 1e-6, f"rank {rank}: {name}"
