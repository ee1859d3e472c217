"""The peer exchange kernel (distributed/kernels/peer.py) on spawned ranks sharing memory, against a float64 chain.

On CPU the ranks are processes under Triton's interpreter whose slots and flags are shared
files mapped into each (as symmetric memory maps them on GPUs), so the protocol itself runs:
pushes, flags raised and lowered, several calls reusing the same buffers in both directions.
"""

import pytest
import torch

from lasp_fx.distributed import header
from tests.helpers import workers_peer
from lasp_fx.numerics import assert_close_rms
from lasp_fx.distributed.spawn import run_spawned

from test_gathered import _reference

B, H, D, E = 1, 2, 5, 7  # D*E = 35: one masked tile per head


def _calls(P, has_decay, seed):
    gen = torch.Generator().manual_seed(seed)
    calls = []
    for forward in (True, False, True, False, False):  # the buffers are reused in both directions
        x = torch.randn(P, B, H, D, E, generator=gen, dtype=torch.float64)
        a = -torch.rand(P, B, H, generator=gen, dtype=torch.float64) * 3 if has_decay else None
        d_final = None if forward else torch.randn(B, H, D, E, generator=gen, dtype=torch.float64)
        calls.append((forward, x, a, d_final))
    return calls


# The ranks share CPU memory mapped from files, which only Triton's interpreter can write through; on a
# GPU machine the kernel runs on real symmetric memory in bench/check_peer_gpu.py (bench/gpu_suite.sh, part peer).
interpreter_only = pytest.mark.skipif(torch.cuda.is_available(), reason="file-mapped peers need Triton's "
                                      "interpreter; on a GPU: bench/check_peer_gpu.py")


@interpreter_only
@pytest.mark.parametrize("has_decay", [False, True], ids=["no_decay", "decay"])
@pytest.mark.parametrize("P", [2, 3, 4], ids=lambda p: f"P{p}")
def test_every_rank_combines_what_the_others_pushed(P, has_decay, tmp_path):
    calls = _calls(P, has_decay, seed=P)
    workers_peer.make_files(str(tmp_path), P, (B, H, D, E))
    f32 = [(fwd, x.float(), None if a is None else a.float(), None if d is None else d.float())
           for fwd, x, a, d in calls]
    results = run_spawned(workers_peer.exchanges, P, str(tmp_path), f32, timeout=300)
    for rank, (outs, flags) in enumerate(results):
        assert not flags.any(), f"rank {rank} left flags up"
        for (forward, x, a, d_final), (late, end) in zip(calls, outs):
            late, end = torch.from_numpy(late), torch.from_numpy(end)
            ref_late, ref_end = _reference(x, a, rank, forward, d_final)
            assert_close_rms(end, ref_end, 1e-6, f"end rank {rank}")
            if forward and rank == 0:  # nothing before rank 0: LASP does not use its late state
                continue
            assert_close_rms(late, ref_late, 1e-6, f"late rank {rank}")


@interpreter_only
def test_a_rank_that_never_sends_is_an_error_not_a_hang(tmp_path):
    workers_peer.make_files(str(tmp_path), 2, (B, H, D, E))
    _, err = run_spawned(workers_peer.lone_receiver, 2, str(tmp_path), (B, H, D, E), 2000, timeout=120)
    assert "waited too long" in err


def test_usable_only_for_float32_cuda_states_on_one_host():
    """Decided once per group from gathered hostnames (the spawned ranks share this host); off with
    LASP_FX_PEER=0; forgotten by release()."""
    for answers in run_spawned(workers_peer.usable_answers, 2, timeout=120):
        assert answers == {"cpu": False, "cuda_float64": False, "cuda_float32": True, "kept": True,
                           "turned_off": False, "released": True}


@pytest.mark.parametrize("culprit", [None, 0], ids=["same_headers", "rank0_other_length"])
def test_headers_ride_in_the_slots_and_a_mismatch_gives_nan(culprit, tmp_path):
    P = 3
    calls = [c for c in _calls(P, True, seed=9) if c[0]][:1]  # one forward exchange
    workers_peer.make_files(str(tmp_path), P, (B, H, D, E))
    f32 = [(fwd, x.float(), a.float(), None) for fwd, x, a, _ in calls]
    lengths = [7 if r == culprit else 8 for r in range(P)]
    results = run_spawned(workers_peer.exchanges, P, str(tmp_path), f32, 1 << 20, lengths, timeout=300)
    for rank, (outs, flags, record) in enumerate(results):
        late, end = (torch.as_tensor(t) for t in outs[0])
        record = torch.as_tensor(record)
        assert not flags.any()
        if culprit is not None and rank > culprit:  # these combine rank 0's state: its header differs
            assert late.isnan().all() and end.isnan().all(), f"rank {rank}"
            # the watch (distributed/watch.py): rank 0's checked values and its rank, and this rank's header
            assert record[:, 0].tolist() == [float(j in (culprit, P)) for j in range(P + 1)], f"rank {rank}"
            got = header.Header.decode(record[culprit, 1:].tolist())
            assert got.dims[1] == 7 and got.rank == culprit and got.status == header.OK, got
            assert header.Header.decode(record[P, 1:].tolist()).rank == rank
        else:
            assert torch.isfinite(end).all(), f"rank {rank}"
            assert not record.any(), f"rank {rank} recorded a mismatch it did not see"
    if culprit is None:  # same as without headers
        plain = run_spawned(workers_peer.exchanges, P, str(tmp_path), f32, timeout=300)
        for (outs, _, _), (ref, _) in zip(results, plain):
            assert all((torch.as_tensor(a) == torch.as_tensor(b)).all() for a, b in zip(outs[0], ref[0]))
