"""The header every state message carries: what the exchange relies on, so ranks never disagree silently.

64 values below 2^16 (exact in any float dtype): the call's shapes, dtype, decay form, method and
scale, the direction, the sender's rank and a status (OK; FAILED with the start of the sender's
error; RELAYED: the sender's own state came from a mismatched message). Checked on the host on
CPU groups (a mismatch raises at once); on CUDA on the device, where a mismatch gives NaN and is
recorded (watch.py), so RankMismatchError is raised at the latest at the next call's forward
(the first lasp_fx forward after a backward): docs/design.md §4.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

import torch
from torch import Tensor

from lasp_fx.config import EXCHANGES

SIZE = 64  # values per header: 256 bytes next to a state of B*H*D*E*4 bytes (1 MiB at 16 x 128 x 128)
_MAGIC = 0x1A5F
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DECAYS = ("none", "per-head [H]", "per-token [B, T, H]")  # + len(_DECAYS) with packed documents
_DIRECTIONS = ("forward", "backward")
_DIMS = ("B", "T", "H", "H_kv", "D", "E")
_TEXT = SIZE - 24  # characters of a failure's reason that fit
# the encoded values that must agree: magic, status, direction, shapes, dtype, decay form, method, scale
CHECKED = slice(0, 22)
STATUS_AT, RANK_AT = 1, 22  # where the status and the sender's rank sit
OK, FAILED, RELAYED = 0, 1, 2


@dataclass(frozen=True)
class Header:
    """One call's description as one rank sees it."""

    dims: tuple  # B, T, H, H_kv, D, E
    dtype: int
    decay: int
    method: int
    scale: float
    direction: int
    rank: int
    status: int = OK
    reason: str = ""

    def key(self) -> tuple:
        """What must agree between ranks."""
        return self.dims, self.dtype, self.decay, self.method, self.scale, self.direction

    def describe(self) -> str:
        B, T, H, Hk, D, E = self.dims
        dtype = _DTYPES[self.dtype] if self.dtype < len(_DTYPES) else f"dtype#{self.dtype}"
        return (f"q [{B}, {T}, {H}, {D}], k/v heads {Hk}, E {E}, {dtype}, decay {_decay_name(self.decay)}, "
                f"method {_pick(EXCHANGES, self.method)}, scale {self.scale:g}")

    def differences(self, other: "Header") -> str:
        """What differs from `other`, shortly ("T 8 vs 6, dtype 2 vs 3"): fits a FAILED header's reason."""
        mine = dict(zip(_DIMS, self.dims), dtype=self.dtype, decay=self.decay, method=self.method,
                    scale=self.scale, direction=self.direction)
        theirs = dict(zip(_DIMS, other.dims), dtype=other.dtype, decay=other.decay, method=other.method,
                      scale=other.scale, direction=other.direction)
        return ", ".join(f"{k} {mine[k]:g} vs {theirs[k]:g}" for k in mine if mine[k] != theirs[k])

    def failed(self, reason: str) -> "Header":
        return Header(self.dims, self.dtype, self.decay, self.method, self.scale, self.direction, self.rank,
                      FAILED, reason)

    def encode(self) -> list[int]:
        scale = struct.unpack("<4H", struct.pack("<d", self.scale))
        dims = [half for d in self.dims for half in (d >> 16 & 0xFFFF, d & 0xFFFF)]
        text = [min(ord(c), 127) for c in self.reason[:_TEXT]]
        # what must agree first (CHECKED), then the sender's rank and the failure text
        head = [_MAGIC, self.status, self.direction, *dims, self.dtype, self.decay, self.method, *scale, self.rank, 0]
        return head + text + [0] * (_TEXT - len(text))

    @staticmethod
    def decode(values: list) -> "Header | None":
        """The header of a received tail, or None when it is not one (a message of another layout)."""
        v = [int(x) for x in values]
        if len(v) != SIZE or v[0] != _MAGIC:
            return None
        dims = tuple(v[3 + 2 * i] << 16 | v[4 + 2 * i] for i in range(6))
        scale = struct.unpack("<d", struct.pack("<4H", *v[18:22]))[0]
        reason = "".join(chr(c) for c in v[24:] if c)
        return Header(dims, v[15], v[16], v[17], scale, v[2], v[22], v[1], reason)


def _pick(names, i):
    return names[i] if 0 <= i < len(names) else f"#{i}"


def _decay_name(i: int) -> str:
    """The decay form, and whether the call packs documents (which changes what the messages hold)."""
    if len(_DECAYS) <= i < 2 * len(_DECAYS):
        return f"{_DECAYS[i - len(_DECAYS)]}, packed documents"
    return _pick(_DECAYS, i)


def make(q: Tensor, k: Tensor, v: Tensor, log_decay, scale: float, method: str, direction: str, rank: int,
         documents: bool = False) -> Header:
    """This rank's header for a call with these inputs (shapes only: no tensor is read)."""
    B, T, H, D = q.shape
    decay = (0 if log_decay is None else (1 if log_decay.dim() == 1 else 2)) + (len(_DECAYS) if documents else 0)
    dtype = _DTYPES.index(q.dtype) if q.dtype in _DTYPES else len(_DTYPES)
    dims = (B, T, H, k.shape[2], D, v.shape[3])
    return Header(dims, dtype, decay, EXCHANGES.index(method), float(scale), _DIRECTIONS.index(direction), rank)


def as_tensor(header: Header, like: Tensor) -> Tensor:
    """The header as SIZE values of `like`'s dtype on its device (exact: every value is below 2^16).

    Read-only, and the same tensor for the same header: a training loop's calls repeat a few
    headers, so the copy to the GPU happens once per layout, not once per call.
    """
    return encoded(header, like.dtype, like.device)


@functools.lru_cache(maxsize=256)
def encoded(header: Header, dtype: torch.dtype, device: torch.device) -> Tensor:
    """as_tensor by dtype and device (read-only: shared by every call with this header)."""
    return torch.tensor(header.encode(), dtype=dtype, device=device)


def mismatch_message(headers: dict, group, when: str = "") -> str:
    """The error text for ranks that disagree: each rank's values, one line per rank (`when`: the
    call it happened in, where that is not this one)."""
    lines = "\n".join(f"  rank {r}: {_line(h)}" for r, h in sorted(headers.items()))
    return (
        f"lasp_fx sequence-parallel linear_attention: the ranks of group {group.group_name!r} passed "
        f"different inputs{when}:\n{lines}\nEvery rank must pass its equal-length slice of one sequence (same "
        "batch, heads, head dims, dtype, decay form, scale and method) on every call; shard the sequence "
        "evenly over the group."
    )


def _line(h: "Header | None") -> str:
    if h is None:
        return "no lasp_fx header"
    if h.status == RELAYED:
        return f"{h.describe()}; passed on a state from a rank whose inputs differ"
    return h.describe()
