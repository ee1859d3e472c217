"""Spawned-rank worker: models over packed rows (position_ids restarting per document) under parallelize(),
against each document run alone in one process.

The reference never sees a packed row: it runs the model on each document by itself (its own
positions from 0, nothing before it) and sums the documents' losses, so equal logits and gradients
mean each rank computed every document exactly as if it were alone, across rank edges too.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lasp_fx.numerics import rel_rms


class HFLlamaPacked(nn.Module):
    """A tiny HF Llama (softmax attention, GQA, rotary) called with the flattening collator's
    position_ids: HF's masking_utils builds the packed mask from them (find_packed_sequence_indices)."""

    def __init__(self):
        super().__init__()
        from tests.helpers.models import HFLlama

        self.model = HFLlama().model

    def forward(self, ids, position_ids=None):
        return self.model(input_ids=ids, position_ids=position_ids, use_cache=False).logits


class HFMiniMaxPacked(nn.Module):
    """HF MiniMax (tests/third_party/hf.py: lightning attention, softmax attention, MoE) with position_ids:
    its softmax layers take HF's packed mask, its lightning layers run over the whole row as HF's do."""

    def __init__(self):
        super().__init__()
        from tests.third_party.hf import MiniMaxLM

        self.lm = MiniMaxLM().lm

    def forward(self, ids, position_ids=None):
        return self.lm(ids, position_ids=position_ids).logits


def build(name: str) -> nn.Module:
    """"hf_llama", "hf_minimax" (float32: torch's CPU grouped_mm has no float64 kernel) or an example model
    (examples.models.MODELS) of 2 layers, width 16, 2 heads, 32 tokens (float64)."""
    torch.manual_seed(0)
    if name == "hf_llama":
        return HFLlamaPacked().double()
    if name == "hf_minimax":
        return HFMiniMaxPacked()
    from examples.models import MODELS, ModelConfig

    return MODELS[name](ModelConfig(vocab_size=32, dim=16, num_layers=2, num_heads=2)).double()


def positions(cu_rows: list[list[int]]) -> torch.Tensor:
    """position_ids [B, T] restarting at 0 at each offset of each row's cu_seqlens."""
    return torch.stack([torch.cat([torch.arange(z - a) for a, z in zip(cu[:-1], cu[1:])]) for cu in cu_rows])


def _alone(model, ids, cu_rows, weights) -> torch.Tensor:
    """The logits [B, T, V] of each document run alone; backward of sum(logits * weights) per document."""
    rows = []
    for b, cu in enumerate(cu_rows):
        pieces = [model(ids[b : b + 1, a:z]) for a, z in zip(cu[:-1], cu[1:])]
        sum((p * weights[b : b + 1, a:z]).sum() for p, (a, z) in zip(pieces, zip(cu[:-1], cu[1:]))).backward()
        rows.append(torch.cat([p.detach() for p in pieces], dim=1))
    return torch.cat(rows)


def packed_vs_alone(rank: int, world: int, cases: list[dict]) -> list[dict]:
    """Per case ({"model": name, "cu": [cu_seqlens of each row], "options": parallelize's}): this rank's
    relative-RMS errors of the packed logits (all ranks', gathered) and of every parameter gradient.
    With "reference": "packed" the reference is the model on the packed rows in one process instead
    (for models that do not compute each document alone, as HF MiniMax's lightning layers)."""
    import lasp_fx

    results = []
    for case in cases:
        model, cu_rows = build(case["model"]), case["cu"]
        ref = copy.deepcopy(model)
        gen = torch.Generator().manual_seed(5)
        T = cu_rows[0][-1]
        ids = torch.randint(0, 32, (len(cu_rows), T), generator=gen)
        dtype = next(model.parameters()).dtype
        weights = torch.randn(len(cu_rows), T, 32, generator=gen, dtype=torch.float64).to(dtype)
        if case.get("reference") == "packed":
            logits_ref = ref(ids, position_ids=positions(cu_rows))
            (logits_ref * weights).sum().backward()
        else:
            logits_ref = _alone(ref, ids, cu_rows, weights)
        lasp_fx.parallelize(model, outputs="full", **case.get("options", {"compiler": "eager"}))
        logits = model(ids, position_ids=positions(cu_rows))
        (logits * weights).sum().backward()
        errors = {"logits": rel_rms(logits, logits_ref)}
        for (name, p), (_, p_ref) in zip(model.named_parameters(), ref.named_parameters()):
            errors[name] = rel_rms(p.grad, p_ref.grad)
        results.append(errors)
    return results


def train_losses(rank: int, world: int, argv: list[str]) -> list[float]:
    """examples/train.py's losses, step by step, on this rank of a group made by spawn."""
    from examples.train import parse_args, train

    return train(parse_args(argv), torch.device("cpu"))
