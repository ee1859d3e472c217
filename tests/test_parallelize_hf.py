"""parallelize() on an unmodified HF transformers model, on every device: its mask, rotary tables and shifted loss."""

import pytest
import torch

from tests.helpers import workers_parallel
from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import device_worlds, run_spawned

pytest.importorskip("transformers")


@pytest.mark.parametrize("device, world_size", device_worlds(2))
def test_hf_llama_matches_one_process(device, world_size):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (2, 24), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100
    case = dict(model="tests.helpers.models:HFLlama", ids=ids, labels=labels, options={"compiler": "eager"},
                device=device)
    ref = workers_parallel.single(case)
    for rank, (got,) in enumerate(run_spawned(workers_parallel.parallel, world_size, [case], device=device,
                                              timeout=600)):
        assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, f"rank {rank}"
        # HF computes the loss on float32 logits: float32 rounding, whatever the model's dtype
        assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-6
        assert set(got["grads"]) == set(ref["grads"])
        for name, g in ref["grads"].items():
            assert rel_rms(torch.as_tensor(got["grads"][name]), torch.as_tensor(g)) <= 1e-6, f"rank {rank}: {name}"
