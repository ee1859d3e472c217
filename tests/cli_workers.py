"""Spawned-rank worker of the CLI tests: a module written by `lasp-fx convert`, loaded and parallelized."""

from __future__ import annotations

import torch


def load_converted(path: str) -> torch.nn.Module:
    """The module `lasp-fx convert --out path` wrote: a .pt2 program or a folder of Python."""
    import importlib
    import os
    import sys

    import lasp_fx  # noqa: F401 (registers the op the program calls)

    if path.endswith(".pt2"):
        return torch.export.load(path).module()
    parent, name = os.path.split(os.path.abspath(path).rstrip(os.sep))
    sys.path.insert(0, parent)
    try:
        return importlib.import_module(name).Converted()
    finally:
        sys.path.remove(parent)
        sys.modules.pop(name, None)


def parallel_converted(rank: int, world_size: int, path: str, ids: torch.Tensor) -> dict:
    """The converted module under lasp_fx.parallelize on this rank: full logits and every parameter's gradient."""
    import lasp_fx

    model = lasp_fx.parallelize(load_converted(path), compiler="eager")
    logits = model(ids)  # a DTensor sharded on the sequence
    logits.to_local().square().sum().backward()  # parameter gradients: summed over the ranks' slices in the graph
    return {"logits": logits.full_tensor().detach().tolist(),
            "grads": {n: p.grad.tolist() for n, p in model.named_parameters() if p.grad is not None}}
