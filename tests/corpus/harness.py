"""Captures of the corpus models, converted once per test session (export costs ~1 s a model)."""

import functools

import torch

from lasp_fx.convert import convert
from tests.corpus import CORPUS, DIM

BATCH, SEQ = 2, 11  # T = 11: not a multiple of the op's chunk, nor of the block loop's chunk


@functools.lru_cache(maxsize=None)
def converted(name: str, device: str = "cpu"):
    """(original float64 model, rewritten GraphModule, report, example input), all on `device`, for a
    corpus entry."""
    model = CORPUS[name][0]().double().to(device)
    x = torch.randn(BATCH, SEQ, DIM, dtype=torch.float64).to(device)
    gm, report = convert(model, x)
    return model, gm, report, x
