"""check=True: every rank's header gathered before any state moves, so a mismatch raises on every rank alike.

The headers the states carry are checked one-sidedly by their receivers, and on CUDA a mismatch
turns into NaN, raised only at the next step (watch.py); this one all-gather of 64 values makes
every rank raise the same RankMismatchError in the call itself and leaves the group usable (on an
NCCL-only group at the cost of a host sync).
"""

from __future__ import annotations

import torch

from lasp_fx.distributed import header as hdr
from lasp_fx.distributed.errors import RankMismatchError
from lasp_fx.distributed.link import Link


def check_same_inputs(link: Link) -> None:
    """Raise RankMismatchError on every rank unless all ranks of the group describe the same call.

    Every rank must pass q/k/v of the same shapes (equal slice lengths T), dtype, decay form,
    scale and resolved method. The initial state is not compared: only rank 0 reads it.
    """
    group, P = link.group, link.group.size()
    on_host = torch.device("cpu") in getattr(group, "_device_types", [torch.device("cpu")])
    mine = hdr.as_tensor(link.header, torch.empty(0, dtype=torch.float32, device="cpu" if on_host else link.device))
    out = mine.new_empty(P * hdr.SIZE)
    from lasp_fx.distributed.allgather import _all_gather_single

    work = _all_gather_single(out, mine, group=group, async_op=True)
    link.wait(work, "all ranks")
    rows = {r: hdr.Header.decode(v) for r, v in enumerate(out.view(P, hdr.SIZE).tolist())}
    if all(h is not None and h.key() == link.header.key() for h in rows.values()):
        return
    raise RankMismatchError(hdr.mismatch_message(rows, group))
