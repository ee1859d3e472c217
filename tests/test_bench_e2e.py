"""bench/e2e.py --tiny on CPU: every variant runs, with and without the memory levers, and computes the same loss."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("levers", ["none", "ckpt+chunkloss+tiles"])
def test_variants_run_and_agree(levers, tmp_path):
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "bench/e2e.py",
           "--tiny", "--lengths", "64", "--dtype", "float32", "--variants", "parallelize,hand,hand_blocks", "--levers", levers,
           "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env={**_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["parallelize", "hand", "hand_blocks"]
    assert all("error" not in r and "loss" in r for r in rows), rows
    first = rows[0]["loss"]
    # the first step's loss, from the same weights and tokens: the same model, compiled three ways
    assert all(abs(r["loss"] - first) <= 1e-5 * first for r in rows), rows


def _env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_", "LOCAL_"))}
