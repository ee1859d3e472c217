"""Spawned-rank worker of the CLI tests: `lasp-fx convert` on each rank, the module it wrote loaded and parallelized."""

from __future__ import annotations

import importlib
import os
import sys

import torch


def load_converted(path: str) -> torch.nn.Module:
    """The module `lasp-fx convert --out path` wrote: a .pt2 program, or a folder of Python (class Converted)."""
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


def convert_and_parallelize(rank: int, world_size: int, cases: list, folder: str, ids: torch.Tensor,
                            device: str) -> list[dict]:
    """For each (target, out name): convert on this rank's device (cuda:rank under NCCL), load, parallelize,
    run `ids` (whole batch on every rank); the full logits and every parameter's gradient of the sum of squares."""
    from typer.testing import CliRunner

    import lasp_fx
    from lasp_fx.cli import app

    dev = f"cuda:{rank}" if device == "cuda" else "cpu"
    results = []
    for target, name in cases:
        out = os.path.join(folder, f"rank{rank}", name)
        run = CliRunner().invoke(app, ["convert", target, "--input-shape", "2,40", "--dtype", "float64",
                                       "--device", device, "--out", out])
        assert run.exit_code == 0, run.output
        model = lasp_fx.parallelize(load_converted(out), compiler="eager")
        logits = model(ids.to(dev))  # a DTensor sharded on the sequence
        logits.to_local().square().sum().backward()  # gradients: summed over the ranks' slices in the graph
        results.append({"logits": logits.full_tensor().detach().cpu().tolist(),
                        "grads": {n: p.grad.cpu().tolist() for n, p in model.named_parameters() if p.grad is not None}})
    return results
