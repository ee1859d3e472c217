"""examples/train.py: packed rows train sequence-parallel with the losses of the plain model in one process."""

import json

import pytest
import torch

from examples.train import MarkovData, parse_args, train
from lasp_fx.distributed.spawn import run_spawned
from tests.helpers import workers_packed_models

TINY = ["--seq-len", "48", "--batch-size", "2", "--steps", "3", "--dim", "16", "--heads", "2", "--doc-len", "10",
        "--compiler", "eager", "--log-every", "1"]


@pytest.mark.parametrize("model", ["hybrid", "gated"])
def test_packed_training_on_2_ranks_equals_one_process(model, tmp_path):
    """Every rank's loss at every step (AdamW after each) equals the model's without parallelize."""
    argv = [*TINY, "--model", model, "--pack"]
    torch.set_num_threads(1)
    want = train(parse_args([*argv, "--json", str(tmp_path / "run.json")]), torch.device("cpu"), parallel=False)
    assert json.loads((tmp_path / "run.json").read_text())["losses"] == want
    got = run_spawned(workers_packed_models.train_losses, 2, argv, timeout=600)
    assert all(len(losses) == 3 for losses in got)
    for rank, losses in enumerate(got):
        assert torch.allclose(torch.tensor(losses), torch.tensor(want), rtol=1e-5, atol=0), (rank, losses, want)
    # the data is packed: every row has several documents, whose last labels are ignored
    _, labels, positions = MarkovData(64).packed_batch(1, 2, 48, 10)
    assert (positions == 0).sum() > 4 and (labels == -100).sum() == (positions == 0).sum()
