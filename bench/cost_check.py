"""The cost model of method="auto" against bench/sp.py measurements, and its predictions for more GPUs.

    python bench/cost_check.py bench/records/*/sp_*gpu*.json bench/records/*/*/sp_*gpu*.json [--predict 8]

For every sp.py JSON that holds an "exchange alone" calibration: the measured forward exchange
of each method against the model's time (lasp_fx.distributed.cost); for every row that timed both
methods on the whole op: which was faster, and whether `auto` picks it. Then the model's times and
pick for P = 2 .. --predict with a 1 MiB state (B=1, H=16, D=E=128 in fp32, as sp.py runs).
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


def _exchange(path: str, d: dict) -> None:
    ex, P = d["exchange"], d["P"]
    model = estimate(P, STATE_BYTES, "cuda")
    print(f"{path}: P={P} {d.get('card', '?')}")
    for method, predicted in (("ring", model.ring_us), ("allgather", model.allgather_us)):
        measured = ex[f"{method}_fwd_exchange_ms"] * 1e3
        print(f"  {method:9s} fwd exchange measured {measured:6.0f} us, model {predicted:6.0f} us "
              f"({measured / predicted:4.2f}x)")


def _whole_op(path: str, d: dict) -> None:
    for row in d.get("rows", []):
        times = {m: row.get(f"{m}_fwdbwd_ms") for m in ("ring", "allgather")}
        if None in times.values():
            continue
        faster = min(times, key=times.get)
        pick = estimate(row["P"], STATE_BYTES, "cuda").method
        verdict = "agrees" if pick == faster else "DIFFERS"
        print(f"{path}: P={row['P']} T/GPU={row['T_local']} fwd+bwd ring {times['ring']:.2f} ms, allgather "
              f"{times['allgather']:.2f} ms: faster {faster}, auto picks {pick} ({verdict})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--predict", type=int, default=8)
    args = ap.parse_args()
    for path in args.files:
        with open(path) as fh:
            d = json.load(fh)
        if "exchange" in d:
            _exchange(path, d)
        _whole_op(path, d)
    print("model, 1 MiB state on cuda:")
    for P in range(2, args.predict + 1):
        c = estimate(P, STATE_BYTES, "cuda")
        print(f"  P={P}: ring {c.ring_us:5.0f} us, allgather {c.allgather_us:5.0f} us -> {c.method}")


if __name__ == "__main__":
    main()
