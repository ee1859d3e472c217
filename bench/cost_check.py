"""The cost model of method="auto" against bench/sp.py measurements, and its predictions for more GPUs.

    python bench/cost_check.py bench/records/*/*/sp*.json [--predict 8]

For every sp.py row timed as CUDA graph replays (the "graph" column: device time alone): what
each method adds to the single-GPU op's fwd+bwd against the model's time
(lasp_fx.distributed.cost), and whether `auto` picks the faster one. Rows without graph times
compare the per-call fwd+bwd instead (host time included). A file's "peer" says whether its
all-gather went through peer memory. Then the model's times and pick for P = 2 .. --predict
with a 1 MiB state (B=1, H=16, D=E=128 in fp32, as sp.py runs), for both transports.
Runs anywhere (no GPU): it reads files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lasp_fx.distributed.cost import estimate  # noqa: E402

STATE_BYTES = 1 * 16 * 128 * 128 * 4


def _measured(row: dict, method: str, column: str):
    for name in (f"{method}-nocheck", method):
        if f"{name}_{column}" in row:
            return row[f"{name}_{column}"]
    return None


def _row(path: str, row: dict, through_peers: bool) -> None:
    column = "graph_ms" if "single-GPU_graph_ms" in row else "fwdbwd_ms"
    base = row.get(f"single-GPU_{column}")
    times = {m: _measured(row, m, column) for m in ("ring", "allgather")}
    if base is None or None in times.values():
        return
    model = estimate(row["P"], STATE_BYTES, "cuda", through_peers)
    added = {m: (t - base) * 1e3 for m, t in times.items()}
    faster = min(times, key=times.get)
    verdict = "agrees" if model.method == faster else "DIFFERS"
    print(f"{path}: P={row['P']} T/GPU={row['T_local']} ({column}): ring adds {added['ring']:.0f} us "
          f"(model {model.ring_us:.0f}), allgather {added['allgather']:.0f} us (model {model.allgather_us:.0f}): "
          f"faster {faster}, auto picks {model.method} ({verdict})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--predict", type=int, default=8)
    args = ap.parse_args()
    for path in args.files:
        with open(path) as fh:
            d = json.load(fh)
        for row in d.get("rows", []):
            _row(path, row, d.get("peer", False))  # files from before the peer path: NCCL's all-gather
    for through_peers in (False, True):
        print(f"model, 1 MiB state on cuda, all-gather {'through peer memory' if through_peers else 'over NCCL'}:")
        for P in range(2, args.predict + 1):
            c = estimate(P, STATE_BYTES, "cuda", through_peers)
            print(f"  P={P}: ring {c.ring_us:5.0f} us, allgather {c.allgather_us:5.0f} us -> {c.method}")


if __name__ == "__main__":
    main()
