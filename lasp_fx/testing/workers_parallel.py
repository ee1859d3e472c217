"""Spawned-rank workers for parallelize(): each rank builds the model, runs it sequence-parallel, reports."""

from __future__ import annotations

import importlib

import torch


def build(spec: str, seed: int = 0, **kwargs):
    """A model from "module:Class" (e.g. "examples.models:LightningLM"), seeded, in float64."""
    module, name = spec.split(":")
    torch.manual_seed(seed)
    return getattr(importlib.import_module(module), name)(**kwargs).double()


def reference(spec: str, ids, labels, steps: int = 0, lr: float = 0.0):
    """Single-process logits, loss, gradients (and losses of `steps` SGD steps)."""
    model = build(spec)
    logits = model(ids)
    loss = model(ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads, _train(model, ids, labels, steps, lr)


def _plain(tree):
    """Tensors as numpy arrays: they cross the process boundary without shared-memory handles."""
    return torch.utils._pytree.tree_map(lambda t: t.detach().numpy() if isinstance(t, torch.Tensor) else t, tree)


def _train(model, ids, labels, steps, lr):
    losses = []
    opt = torch.optim.SGD(model.parameters(), lr=lr) if steps else None
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, labels=labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def parallel(rank, world_size, spec: str, ids, labels, steps: int = 0, lr: float = 0.0, options=None):
    """The same on this rank with lasp_fx.parallelize: gathered logits, loss, gradients, losses."""
    import lasp_fx

    model = lasp_fx.parallelize(build(spec), **(options or {}))
    logits = model(ids).full_tensor()
    loss = model(ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return _plain((logits, loss, grads, _train(model, ids, labels, steps, lr)))
