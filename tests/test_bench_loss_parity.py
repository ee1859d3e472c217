"""bench/loss_parity.py on CPU: P gloo ranks through parallelize() against one process, every step's loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_comparison_finds_the_largest_difference_and_the_ranks_spread():
    sys.path.insert(0, str(ROOT))
    from bench.loss_parity import _compare

    got = _compare([[2.0, 1.0, 0.5], [2.0, 1.0, 0.5000001]], [2.0, 1.1, 0.5])
    assert got["at_step"] == 2 and got["max_rel_diff"] == pytest.approx(0.1 / 1.1)
    assert got["final_rel_diff"] == 0.0 and got["max_rank_spread"] == pytest.approx(1e-7)


@pytest.mark.parametrize("model, world", [("hybrid", 2), ("lightning", 3)])
def test_parallel_training_keeps_the_losses_of_one_process(model, world, tmp_path):
    out = tmp_path / "parity.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "bench/loss_parity.py", "--json", str(out), "--model", model, "--steps", "4", "--seq-len", "78",
           "--batch-size", "2", "--dim", "16", "--heads", "2", "--compiler", "eager"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "RANK", "WORLD_", "LOCAL_"))}
    done = subprocess.run(cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["world_size"] == world and len(record["one"]) == 4 and len(record["parallel"]) == world
    assert record["one"][0] > record["floor"]  # a real run: the loss starts above the data's entropy
    assert record["max_rel_diff"] <= 1e-5 and record["max_rank_spread"] <= 1e-6, record
