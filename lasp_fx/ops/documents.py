"""Packed documents: cu_seqlens, per-token document ids, their checks, and the run index the kernels read.

One thing in three forms, shared by the op, padding masks and softmax layers:
    cu_seqlens    FlashAttention's varlen offsets [n + 1], int32 or int64: 0 first, strictly
                  increasing, the packed row's length last; one packed row (B = 1).
    document ids  [B, T] integer labels per token: 1..n documents, 0 padding by convention. Each
                  maximal run of equal labels is one document (a padding run is one of its own,
                  which no real token sees).
    runs          what the kernels read, int32 [B, T + 1], nondecreasing along T: entry 1 + t is
                  token t's run, entry 0 the run of the state entering the slice (the initial
                  state, or the state from the rank before). Token j reaches token i >= j iff
                  runs[1 + j] == runs[1 + i]; the entering state reaches token i iff
                  runs[0] == runs[1 + i]. Only equality is read: no -inf, no reset arithmetic.
With a sequence split over ranks, cu_seqlens and ids are the global ones (the same on every
rank); a rank's runs cover its slice, entry 0 being the run of the token before it, so a
document that crosses the rank edge continues and one that starts there does not. On the first
slice entry 0 equals token 0's run: an initial state flows into the first document.

Values are checked where that costs no host sync (CPU tensors, eagerly), as the op's log_decay;
on a GPU they are the caller's promise.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _values_readable(x: Tensor) -> bool:
    return x.device.type == "cpu" and type(x) is Tensor and not torch.compiler.is_compiling()


def check_cu_seqlens(cu_seqlens, total: int, batch: int = 1) -> Tensor:
    """`cu_seqlens` as a 1-D integer tensor, or ValueError / TypeError naming what is wrong.

    total: the packed row's length (all ranks' tokens with a group); batch: q's B, which must be 1.
    """
    if isinstance(cu_seqlens, (list, tuple)):
        cu_seqlens = torch.tensor(cu_seqlens, dtype=torch.int64)
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(f"cu_seqlens must be a 1-D integer tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be int32 or int64 (FlashAttention's varlen offsets), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"cu_seqlens must be 1-D with at least 2 offsets [0, ..., T], got shape {list(cu_seqlens.shape)}"
        )
    if batch != 1:
        raise ValueError(
            f"cu_seqlens packs documents into one row: q must have batch size 1, got {batch}; "
            "concatenate the batch's rows along the sequence (B = 1) or pass document_ids [B, T]"
        )
    if _values_readable(cu_seqlens):
        values = cu_seqlens.tolist()
        if values[0] != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {values[0]} (offsets {_short(values)})")
        steps = [i for i in range(1, len(values)) if values[i] <= values[i - 1]]
        if steps:
            i = steps[0]
            raise ValueError(
                f"cu_seqlens must be strictly increasing (every document at least 1 token), got "
                f"{values[i - 1]} then {values[i]} at index {i} (offsets {_short(values)})"
            )
        if values[-1] != total:
            raise ValueError(
                f"cu_seqlens must end at the packed length {total} (all ranks' tokens with a group), "
                f"got {values[-1]} (offsets {_short(values)})"
            )
    return cu_seqlens


def check_document_ids(ids, batch: int, total: int) -> Tensor:
    """`ids` as an integer [B, total] tensor, or ValueError / TypeError naming what is wrong."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"document_ids must be an integer tensor [B, T], got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"document_ids must be an integer tensor (labels per token), got {ids.dtype}")
    if tuple(ids.shape) != (batch, total):
        raise ValueError(
            f"document_ids must have shape [B, T] = [{batch}, {total}] (all ranks' tokens with a group), "
            f"got {list(ids.shape)}"
        )
    return ids


def ids_from_cu_seqlens(cu_seqlens: Tensor, start: int = 0, length: int | None = None) -> Tensor:
    """Document ids 1..n [1, length] of tokens [start, start + length) of the packed row (int64)."""
    cu = cu_seqlens.to(torch.int64)
    length = int(cu[-1]) - start if length is None else length
    positions = torch.arange(start, start + length, device=cu.device)
    return torch.searchsorted(cu, positions, right=True)[None]


def cu_seqlens_from_ids(ids: Tensor) -> Tensor:
    """cu_seqlens (int32) of one packed row [1, T] or [T] of labels: an offset where the label changes.

    Reads the values back (a host sync on a GPU): for data loading, not for every step of a model.
    """
    row = ids.reshape(-1) if ids.dim() == 1 or ids.shape[0] == 1 else None
    if row is None:
        raise ValueError(f"cu_seqlens describes one packed row: ids must be [1, T] or [T], got {list(ids.shape)}")
    change = torch.nonzero(row[1:] != row[:-1]).reshape(-1) + 1
    ends = torch.tensor([0, row.numel()], device=row.device)
    return torch.cat([ends[:1], change, ends[1:]]).to(torch.int32)


def cu_seqlens_from_position_ids(position_ids: Tensor) -> Tensor:
    """cu_seqlens (int32) of one packed row whose positions restart at 0 per document (HF's
    DataCollatorWithFlattening). Reads the values back, as cu_seqlens_from_ids."""
    row = position_ids.reshape(-1) if position_ids.dim() == 1 or position_ids.shape[0] == 1 else None
    if row is None:
        raise ValueError(f"position_ids of a packed row must be [1, T] or [T], got {list(position_ids.shape)}")
    starts = torch.nonzero(row[1:] == 0).reshape(-1) + 1
    ends = torch.tensor([0, row.numel()], device=row.device)
    return torch.cat([ends[:1], starts, ends[1:]]).to(torch.int32)


def runs_from_cu_seqlens(cu_seqlens: Tensor, start: int, length: int) -> Tensor:
    """The runs [1, length + 1] (module docstring) of tokens [start, start + length) of the packed row."""
    cu = cu_seqlens if cu_seqlens.dtype in (torch.int32, torch.int64) else cu_seqlens.to(torch.int64)
    # entry 0: the token before; in cu's dtype and straight to int32: three launches per call, no casts
    positions = torch.arange(start - 1, start + length, device=cu.device, dtype=cu.dtype).clamp_(min=0)
    return torch.searchsorted(cu, positions, right=True, out_int32=True)[None]


def runs_from_ids(ids: Tensor, start: int, length: int) -> Tensor:
    """The runs [B, length + 1] of tokens [start, start + length) of rows of labels [B, total]."""
    changes = (ids[:, 1:] != ids[:, :-1]).to(torch.int32)
    runs = torch.cat([changes.new_zeros(ids.shape[0], 1), torch.cumsum(changes, dim=1, dtype=torch.int32)], dim=1)
    before = runs[:, max(start - 1, 0) : max(start, 1)]  # the token before the slice (the first token's own on rank 0)
    return torch.cat([before, runs[:, start : start + length]], dim=1).contiguous()


@torch.library.custom_op("lasp_fx::document_runs", mutates_args=())
def document_runs(ids: Tensor) -> Tensor:
    """The runs [B, T + 1] of whole rows of labels [B, T]: `runs_from_ids(ids, 0, T)` as one node of a
    traced graph, which the sharding pass gives the label before each rank's slice
    (distributed/documents.py): a slice's labels alone cannot say whether its first document
    continues from the rank before."""
    return runs_from_ids(ids, 0, ids.shape[1])


@document_runs.register_fake
def _document_runs_fake(ids):
    return ids.new_empty(ids.shape[0], ids.shape[1] + 1, dtype=torch.int32)


def slice_runs(cu_seqlens, document_ids, batch: int, length: int, rank: int = 0, world: int = 1,
               device: torch.device | None = None) -> Tensor | None:
    """Check the op's `cu_seqlens` / `document_ids` and give rank `rank`'s runs [B, length + 1] on `device`.

    None when both are None. `length` is the slice's token count (every rank's), so the packed
    row is world * length tokens long.
    """
    if cu_seqlens is None and document_ids is None:
        return None
    if cu_seqlens is not None and document_ids is not None:
        raise ValueError("pass cu_seqlens or document_ids, not both (they describe the same documents)")
    total, start = world * length, rank * length
    if cu_seqlens is not None:
        runs = runs_from_cu_seqlens(check_cu_seqlens(cu_seqlens, total, batch), start, length)
    elif world == 1:
        runs = document_runs(check_document_ids(document_ids, batch, total))
    else:
        runs = runs_from_ids(check_document_ids(document_ids, batch, total), start, length)
    return runs if device is None else runs.to(device, non_blocking=True)


RULES = ("restart", "consecutive", "labels")


def runs_of(values: Tensor, rule: str) -> Tensor:
    """The run index [B, T] (int64, nondecreasing: equal within a document) of rows of per-token values.

    rule: how the values mark documents.
        "restart": position_ids that restart at 0 per document (HF's DataCollatorWithFlattening): a
            document starts where the position is 0.
        "consecutive": positions that step by 1 inside a document (HF masking_utils'
            find_packed_sequence_indices): a document starts where the step is not 1.
        "labels": document ids: each maximal run of one label is a document.
    """
    if rule == "restart":
        starts = values == 0
    elif rule in ("consecutive", "labels"):
        step = 1 if rule == "consecutive" else 0
        starts = torch.cat([torch.zeros_like(values[:, :1], dtype=torch.bool), values[:, 1:] != values[:, :-1] + step], 1)
    else:
        raise ValueError(f"unknown document rule {rule!r}: one of {', '.join(RULES)}")
    return torch.cumsum(starts, dim=1)


def survives(runs: Tensor) -> Tensor:
    """bool [B]: the state entering the slice reaches its end (no document starts inside it)."""
    return runs[:, -1] == runs[:, 0]


def _short(values: list) -> str:
    return str(values) if len(values) <= 12 else f"[{', '.join(map(str, values[:5]))}, ..., {values[-1]}]"
