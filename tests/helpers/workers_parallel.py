"""Spawned-rank workers for parallelize(): each rank builds a model, runs it sequence-parallel, reports.

A case is a dict: model ("module:Class"), ids, labels, mask (optional: the [B, T] attention_mask
passed as `attention_mask=`), dtype ("float64" / "float32"), steps (AdamW
steps after the gradient check), options (parallelize keyword arguments), mesh ("sp" or "dp,sp"),
device ("cpu", or "cuda": rank r on cuda:r, under spawn's NCCL group; ids and labels travel on the
CPU). `single(case)` computes the same numbers in one process, for the parent to compare with.
Results come back as numpy arrays, on the CPU whatever the device.
"""

from __future__ import annotations

import importlib

import torch


def build(model: str, dtype: str = "float64", seed: int = 0, **kwargs):
    """A model from "module:Class" (e.g. "examples.models:LightningLM"), seeded, in `dtype`."""
    module, name = model.split(":")
    torch.manual_seed(seed)
    return getattr(importlib.import_module(module), name)(**kwargs).to(getattr(torch, dtype))


def _run(model, case, gather):
    """Logits, loss, parameter gradients, and the losses of `steps` AdamW steps."""
    extra = {"attention_mask": case["mask"]} if case.get("mask") is not None else {}
    out = model(case["ids"], **extra)
    logits = gather(out)
    loss = model(case["ids"], labels=case["labels"], **extra)
    loss.backward()
    grads = {n.removeprefix("module."): _full(p.grad) for n, p in model.named_parameters() if p.grad is not None}
    losses = []
    if case.get("steps"):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(case["steps"]):
            opt.zero_grad()
            step_loss = model(case["ids"], labels=case["labels"], **extra)
            step_loss.backward()
            opt.step()
            losses.append(step_loss.item())
    return _plain({"logits": logits, "loss": loss, "grads": grads, "losses": losses})


def lm_batch(rows: int, T: int, vocab: int, seed: int = 0):
    """(ids, labels) [rows, T] drawn on the CPU, some labels -100: ignored labels change the loss's
    count, not only its sum."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, T), generator=gen)
    labels = torch.randint(0, vocab, (rows, T), generator=gen)
    labels[0, :5] = -100
    labels[-1, 17] = -100
    return ids, labels


def single(case) -> dict:
    """The case on one process (on the case's device, cuda:0 for "cuda"): the reference."""
    case = _on_device(case, 0)
    return _run(_model(case), case, lambda t: t)


def parallel(rank, world_size, cases) -> list:
    """Every case with lasp_fx.parallelize on this rank; results in the order of `cases`."""
    import lasp_fx

    results = []
    for case in cases:
        case = _on_device(case, rank)
        mesh = _mesh(case.get("mesh", "sp"), world_size, case["device"])
        model = lasp_fx.parallelize(_model(case), mesh=mesh, **case.get("options", {}))
        if case.get("mesh") == "dp,sp":  # each data-parallel replica takes its own half of the batch
            case = _dp_slice(case, mesh)
            if case.get("data_parallel") == "fsdp":
                from torch.distributed.fsdp import fully_shard

                fully_shard(model, mesh=mesh["dp"])
            else:
                model = torch.nn.parallel.DistributedDataParallel(model, process_group=mesh["dp"].get_group())
        if case.get("options", {}).get("inputs") == "local":  # the memory-efficient path
            case = {**case, **lasp_fx.shard_batch({k: case[k] for k in _batch_keys(case)}, mesh)}
        elif case.get("dtensor_inputs"):
            from torch.distributed.tensor import Shard, distribute_tensor

            case = {**case, **{k: distribute_tensor(case[k], mesh, [Shard(1)]) for k in _batch_keys(case)}}
        results.append(_run(model, case, lambda t: t.full_tensor()))
    return results


def parallel_errors(rank, world_size, cases) -> list:
    """The message of the error each case's first call raises (None when it raises nothing)."""
    import lasp_fx

    messages = []
    for case in cases:
        case = _on_device(case, rank)
        model = lasp_fx.parallelize(_model(case), **case.get("options", {}))
        try:
            model(case["ids"])
            messages.append(None)
        except Exception as e:  # noqa: BLE001 - the message is what the test checks
            messages.append(f"{type(e).__name__}: {e}")
    return messages


def _on_device(case, rank):
    """The case with its device made concrete (cuda:{rank}; spawn made it the current device) and
    its ids, labels and mask on it."""
    device = f"cuda:{rank}" if torch.device(case.get("device", "cpu")).type == "cuda" else "cpu"
    return {**case, "device": device, **{k: case[k].to(device) for k in _batch_keys(case)}}


def _batch_keys(case) -> list[str]:
    """The case's tensors with the sequence in dim 1: ids, labels and the attention mask if any."""
    return [k for k in ("ids", "labels", "mask") if case.get(k) is not None]


def _model(case):
    return build(case["model"], case.get("dtype", "float64"), **case.get("kwargs", {})).to(case["device"])


def _full(grad):
    """A gradient as a plain tensor (FSDP2 keeps it as a DTensor sharded over "dp")."""
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad.detach().clone()


def _mesh(kind: str, world_size: int, device: str):
    from torch.distributed.device_mesh import init_device_mesh

    device_type = torch.device(device).type
    if kind == "dp,sp":
        return init_device_mesh(device_type, (2, world_size // 2), mesh_dim_names=("dp", "sp"))
    return init_device_mesh(device_type, (world_size,), mesh_dim_names=("sp",))


def _dp_slice(case, mesh):
    dp, n = mesh["dp"].get_local_rank(), mesh["dp"].size()
    rows = case["ids"].shape[0] // n
    return {**case, **{k: case[k][dp * rows:(dp + 1) * rows] for k in _batch_keys(case)}}


def _plain(tree):
    """Tensors as numpy arrays (copied to the CPU): they cross the process boundary without
    shared-memory or CUDA IPC handles."""
    return torch.utils._pytree.tree_map(lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t, tree)
