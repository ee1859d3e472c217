"""Writes into tensors in place under parallelize(): along features exact on every rank (outputs and
every gradient against one process), along the sequence or into a tensor without it refused at the line."""

import pytest
import torch

from lasp_fx.distributed.spawn import run_spawned
from lasp_fx.numerics import rel_rms
from lasp_fx.passes.shard.writes import _indexed_layout
from tests.helpers import workers_parallel
from tests.helpers.write_models import EQUAL, REFUSED

T = 24
WHY = {
    "write_into_table": r"aten.copy_.default at .*write_models.py:\d+ \(buf\[:, :x.shape\[1\]\] = self.proj\(x\)\): "
                        r"writes positions of the sequence into a tensor that does not carry it",
    "write_at_positions": r"aten.index_put_?.default at .*write_models.py:\d+ .*writes at chosen positions of the "
                          r"sequence dimension",
    "index_from_tokens": r"aten.index_put_?.default at .*write_models.py:\d+ .*writes at indices computed along "
                         r"the sequence",
    "write_into_padded": r"aten.fill_.Tensor at .*write_models.py:\d+ \(p\[:, 1:, :4\] = 0.0\): writes into a "
                         r"tensor padded along the sequence",
    "add_into_table": r"aten.add_.Tensor at .*write_models.py:\d+ \(buf\[:x.shape\[1\]\].add_\(self.proj\(x\)"
                      r"\[0\]\)\): writes positions of the sequence into a tensor that does not carry it",
}


def _case(kind):
    ids, labels = workers_parallel.lm_batch(2, T, 32)
    return dict(model="tests.helpers.write_models:WriteLM", kwargs={"kind": kind}, ids=ids, labels=labels,
                options={"compiler": "eager"})


@pytest.mark.parametrize("ndim, written, layout", [
    pytest.param(3, [2], [0, 1, None], id="last_dim"),
    pytest.param(3, [], [0, 1, 2], id="nothing_indexed"),
    pytest.param(4, [1, 2], [0, None, 3], id="adjacent_dims_stay"),
    pytest.param(4, [0, 2], [None, 1, 3], id="apart_go_first"),
])
def test_indexed_dims_as_torch_lays_them_out(ndim, written, layout):
    assert _indexed_layout(ndim, written) == layout


@pytest.mark.parametrize("world_size", [2, 3])
def test_writes_along_features_equal_one_process(world_size):
    cases = [_case(k) for k in EQUAL]
    results = run_spawned(workers_parallel.parallel, world_size, cases, timeout=600)
    for case in cases:
        ref = workers_parallel.single(case)
        for rank, per_rank in enumerate(results):
            got, where = per_rank[cases.index(case)], f"{case['kwargs']['kind']} rank {rank}/{world_size}"
            assert rel_rms(torch.as_tensor(got["logits"]), torch.as_tensor(ref["logits"])) <= 1e-10, where
            assert rel_rms(torch.as_tensor(got["loss"]), torch.as_tensor(ref["loss"])) <= 1e-10, where
            assert set(got["grads"]) == set(ref["grads"]), where
            for p, g in ref["grads"].items():
                assert rel_rms(torch.as_tensor(got["grads"][p]), torch.as_tensor(g)) <= 1e-10, f"{where}: {p}"


def test_writes_along_the_sequence_are_refused_at_their_line():
    import re

    messages = run_spawned(workers_parallel.parallel_errors, 2, [_case(k) for k in REFUSED], timeout=600)
    for rank, per_rank in enumerate(messages):
        for kind, message in zip(REFUSED, per_rank):
            assert message is not None and re.search(WHY[kind], message), f"{kind} rank {rank}: {message}"
