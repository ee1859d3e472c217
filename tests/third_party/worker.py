"""Spawned-rank worker: each case under parallelize(), or the error it raised (same on every rank)."""

from tests.helpers import workers_parallel


def verdicts(rank, world_size, cases) -> list:
    out = []
    for case in cases:
        try:
            out.append({"result": workers_parallel.parallel(rank, world_size, [case])[0]})
        except Exception as e:  # noqa: BLE001 - the message is what the test checks
            import traceback

            out.append({"error": f"{type(e).__name__}: {e}", "tb": traceback.format_exc()[-3000:]})
    return out
