"""Packed documents across ranks: the label before each rank's slice, and running counts over the whole row.

Both are a slice's local result plus what the earlier ranks hold, gathered (a few integers per row
from every rank): a document that crosses a rank edge continues, and document numbers counted
with a cumsum are the same on every rank as on one device. Integers only: no gradient, and the
sum of the earlier ranks' counts is exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lasp_fx.distributed.seq_ops import gather_sequence
from lasp_fx.ops.documents import runs_from_ids


def document_runs_over_ranks(ids: Tensor, rank: int, group_name: str) -> Tensor:
    """The runs [B, s + 1] (ops/documents.py) of this rank's slice of labels [B, s]: entry 0 is the run
    of the previous rank's last token (rank 0: of its own first token, as on one device)."""
    lasts = gather_sequence(ids[:, -1:].contiguous(), 1, group_name)  # [B, P]: every rank joins
    before = ids[:, :1] if rank == 0 else lasts[:, rank - 1 : rank]
    return runs_from_ids(torch.cat([before, ids], dim=1), 1, ids.shape[1])


def cumsum_over_ranks(local: Tensor, x: Tensor, dim: int, rank: int, group_name: str) -> Tensor:
    """cumsum(x, dim) over the whole sequence from this rank's `local` = cumsum(x, dim) of its slice:
    plus the totals of the ranks before it."""
    totals = gather_sequence(x.sum(dim, keepdim=True, dtype=local.dtype), dim, group_name)  # [.., P, ..]
    return local + totals.narrow(dim, 0, rank).sum(dim, keepdim=True, dtype=local.dtype)

