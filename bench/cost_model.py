"""The cost model of method="auto" against bench/sp.py measurements, and its predictions for more GPUs.

    python bench/cost_model.py bench/records/*/*/sp*.json [--predict 8]

For every sp.py row timed as CUDA graph replays: what each method adds to the single-GPU op's
fwd+bwd against the model's time (lasp_fx.distributed.cost), and whether `auto` picks the
faster one; in the "graph" column (each replay after a barrier: the ranks' start skew is
included) and, where the file has it, "g.loop" (replays back to back: the exchange alone). Rows
without graph times compare the per-call fwd+bwd instead (host time included). A file's "peer" says whether its
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
    columns = [c for c in ("graph_ms", "graphloop_ms") if f"single-GPU_{c}" in row] or ["fwdbwd_ms"]
    model = estimate(row["P"], STATE_BYTES, "cuda", through_peers)
    modelled = {"ring": model.ring_us, "allgather": model.allgather_us}
    for column in columns:
        base = row.get(f"single-GPU_{column}")
        times = {m: t for m in ("ring", "allgather") if (t := _measured(row, m, column)) is not None}
        if base is None or not times:
            continue
        added = ", ".join(f"{m} adds {(t - base) * 1e3:.0f} us (model {modelled[m]:.0f})" for m, t in times.items())
        verdict = ""
        if len(times) == 2:
            faster = min(times, key=times.get)
            agreement = "agrees" if model.method == faster else "DIFFERS"
            verdict = f": faster {faster}, auto picks {model.method} ({agreement})"
        print(f"{path}: P={row['P']} T/GPU={row['T_local']} ({column}): {added}{verdict}")


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
