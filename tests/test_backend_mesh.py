"""backend="lasp" with options={"mesh": ...}: each rank (gloo on the CPU, NCCL on GPUs) passes its slice
and gets the single-process numbers."""

import pytest
import torch

from lasp_fx.numerics import rel_rms
from lasp_fx.distributed.spawn import device_worlds, run_spawned

T = 30  # 10 tokens per rank on 3 ranks: every slice ends mid-chunk


def _case(device, seed=0):
    from examples.models import GatedLM, ModelConfig

    torch.manual_seed(seed)
    model = GatedLM(ModelConfig(num_layers=1)).double().to(device)
    gen = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same ids on every device
    ids, labels = torch.randint(0, 64, (2, T), generator=gen), torch.randint(0, 64, (2, T), generator=gen)
    return model, ids.to(device), labels.to(device)


def _run(fn, model, ids, labels):
    logits = fn(ids)
    loss = fn(ids, labels=labels)
    loss.backward()
    return {"logits": logits.detach().cpu(), "loss": loss.detach().cpu(),
            "grads": {n: p.grad.cpu() for n, p in model.named_parameters()}}


def sharded(rank, world_size, device):
    """On each rank (on cuda:{rank} for "cuda"): compile with the mesh option, run this rank's slice; a
    DeviceMesh with the ring exchange, then the ProcessGroup with the all-gather exchange."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import lasp_fx
    from lasp_fx.backend import lasp_backend

    results = []
    device = f"cuda:{rank}" if device == "cuda" else "cpu"
    mesh_device = torch.device(device).type
    for mesh, method in ((init_device_mesh(mesh_device, (world_size,), mesh_dim_names=("sp",)), "ring"),
                         (dist.group.WORLD, "allgather")):
        torch._dynamo.reset()
        model, ids, labels = _case(device)
        ids, labels = lasp_fx.shard_batch((ids, labels), mesh)
        compiled = torch.compile(model, backend=lasp_backend, fullgraph=True,
                                 options={"mesh": mesh, "method": method, "compiler": "eager"})
        out = _run(compiled, model, ids, labels)  # as lists: tensors would travel as shared memory of an exiting process
        results.append({"logits": out["logits"].tolist(), "loss": out["loss"].item(),
                        "grads": {n: g.tolist() for n, g in out["grads"].items()}})
    return results


@pytest.mark.parametrize("device, world_size", device_worlds(3))
def test_mesh_option_makes_the_model_sequence_parallel(device, world_size):
    model, ids, labels = _case(device)
    ref = _run(model, model, ids, labels)
    local = T // world_size
    for rank, per_rank in enumerate(run_spawned(sharded, world_size, device, device=device, timeout=600)):
        for got, how in zip(per_rank, ("DeviceMesh, ring", "ProcessGroup, allgather")):
            f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
            where = f"rank {rank} ({how})"
            assert rel_rms(f64(got["logits"]), ref["logits"][:, rank * local:(rank + 1) * local]) <= 1e-12, where
            assert rel_rms(f64(got["loss"]), ref["loss"]) <= 1e-12, f"{where}: the loss is global"
            for name, g in ref["grads"].items():
                err = rel_rms(f64(got["grads"][name]), g)
                assert err <= 1e-12, f"{where}: gradient of {name} (summed over ranks) off by {err:.2e}"
