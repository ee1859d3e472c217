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


def test_ulysses_and_parallelize_on_2_ranks_take_the_same_steps(tmp_path):
    """Sequence parallel both ways (the baseline of issue 23): the same loss before and after the steps."""
    out = tmp_path / "e2e.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "bench/e2e.py",
           "--tiny", "--lengths", "96", "--dtype", "float32", "--variants", "parallelize,ulysses,hand", "--levers",
           "none", "--steps", "2", "--warmup", "0", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env={**_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert "one GPU only" in rows["hand"]["skipped"]
    a, b = rows["parallelize"], rows["ulysses"]
    assert a["last_loss"] != a["loss"]  # the steps moved the weights
    for key in ("loss", "last_loss"):
        assert abs(a[key] - b[key]) <= 1e-5 * a[key], (a, b)


def test_a_2d_mesh_keeps_replicas_in_step_with_ddp_and_with_fsdp(tmp_path):
    """--dp 2 on 4 ranks: 2 replicas of a sequence split in 2; DDP and FSDP2 take the same steps."""
    rows = []
    for how in ("ddp", "fsdp"):
        out = tmp_path / f"{how}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "bench/e2e.py",
               "--tiny", "--lengths", "96", "--dtype", "float32", "--variants", "parallelize", "--levers", "none",
               "--steps", "2", "--warmup", "0", "--dp", "2", "--data-parallel", how, "--json", str(out)]
        done = subprocess.run(cmd, cwd=ROOT, env={**_env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        rows += json.loads(out.read_text())["rows"]
    ddp, fsdp = rows
    assert ddp["dp"] == fsdp["dp"] == 2 and "error" not in ddp and "error" not in fsdp, rows
    assert ddp["last_loss"] != ddp["loss"]
    for key in ("loss", "last_loss"):
        assert abs(ddp[key] - fsdp[key]) <= 1e-5 * ddp[key], rows
