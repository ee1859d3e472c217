"""The all-gather's combination kernel (distributed/kernels/gathered.py) against a float64 chain of steps."""

import pytest
import torch

from lasp_fx.distributed.kernels.gathered import combine_gathered
from lasp_fx.numerics import assert_close_rms

B, H, D, E = 2, 3, 5, 7  # D*E = 35: one masked block per head
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the kernel: on the GPU, else the interpreter


def _rows(P, has_decay, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    states = torch.randn(P, B, H, D, E, generator=gen, dtype=torch.float64)
    decays = -torch.rand(P, B, H, generator=gen, dtype=torch.float64) * 3 if has_decay else None
    if has_decay:
        decays[0, 0, 1] = float("-inf")  # a slice that forgets everything before it
    parts = [states.reshape(P, -1)] + ([decays.reshape(P, -1)] if has_decay else [])
    return torch.cat(parts, 1).to(dtype), states, decays


def _step(x, decays, j, s):
    return s + (x if decays is None else torch.exp(decays[j])[..., None, None] * x)


def _reference(states, decays, rank, forward, d_final):
    """The chain the ring runs, in float64: (late, end) of gathered.py's docstring."""
    P = states.shape[0]
    if forward:
        x = torch.zeros_like(states[0])
        for j in range(rank):
            x = _step(x, decays, j, states[j])
        return x, _step(x, decays, rank, states[rank])
    m = torch.zeros_like(states[0])
    for j in reversed(range(rank + 1, P)):
        m = _step(m, decays, j, states[j])
    return (m if d_final is None else m + d_final), _step(m, decays, rank, states[rank])


# Only where LASP calls it: forward on ranks > 0, backward (with or without d_final) on ranks < P - 1.
CASES = [
    pytest.param(P, r, fwd, fin, id=f"P{P}-rank{r}-{'forward' if fwd else 'backward'}{'-d_final' if fin else ''}")
    for P in (2, 3, 4) for r in range(P) for fwd, fin in ((True, False), (False, False), (False, True))
    if (r > 0 if fwd else r < P - 1)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("has_decay", [False, True], ids=["no_decay", "decay"])
@pytest.mark.parametrize("P, rank, forward, with_final", CASES)
def test_combination_matches_the_chain(P, rank, forward, with_final, has_decay, dtype):
    rows, states, decays = _rows(P, has_decay, dtype, seed=P * 10 + rank)
    d_final = torch.randn(B, H, D, E, dtype=torch.float64) if with_final else None
    late, end = combine_gathered(rows.to(DEVICE), (B, H, D, E), rank, forward, has_decay,
                                 None if d_final is None else d_final.to(DEVICE, dtype))
    ref_late, ref_end = _reference(states, decays, rank, forward, d_final)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert late.dtype == end.dtype == dtype
    assert_close_rms(late, ref_late, tol, "late")
    assert_close_rms(end, ref_end, tol, "end")


def _header(T, rank=0):
    from lasp_fx.distributed import header

    q = torch.zeros(B, T, H, D)
    return header.make(q, q, torch.zeros(B, T, H, E), None, 0.5, "ring", "forward", rank)


@pytest.mark.parametrize("mismatch", [False, True], ids=["same", "other_length"])
@pytest.mark.parametrize("P, rank, forward, with_final",
                         [CASES[0], CASES[-1]] + [c for c in CASES if "P3-rank1" in c.id])
def test_combination_checks_every_rows_header(P, rank, forward, with_final, mismatch):
    from lasp_fx.distributed import header

    rows, states, decays = _rows(P, True, torch.float32, seed=P)
    rows = rows.to(DEVICE)
    tails = torch.stack([header.as_tensor(_header(7 if mismatch and j == P - 1 else 8, j), rows) for j in range(P)])
    own = header.as_tensor(_header(8, rank), rows)
    d_final = torch.randn(B, H, D, E).to(DEVICE) if with_final else None
    late, end = combine_gathered(torch.cat([rows, tails], 1), (B, H, D, E), rank, forward, True, d_final,
                                 own_tail=own, checked=header.CHECKED.stop)
    if mismatch:
        assert late.isnan().all() and end.isnan().all()
    else:
        ref_late, ref_end = _reference(states, decays, rank, forward, None if d_final is None else d_final.double().cpu())
        assert_close_rms(late, ref_late, 1e-6, "late")
        assert_close_rms(end, ref_end, 1e-6, "end")


@pytest.mark.parametrize("seal", [False, True], ids=["last", "sends_on"])
@pytest.mark.parametrize("with_final", [False, True], ids=["", "d_final"])
@pytest.mark.parametrize("has_decay", [False, True], ids=["no_decay", "decay"])
@pytest.mark.parametrize("mismatch", [False, True], ids=["same", "other_length"])
def test_ring_link_in_one_launch(mismatch, has_decay, with_final, seal):
    from lasp_fx.distributed import header
    from lasp_fx.distributed.kernels.gathered import checked_step

    gen = torch.Generator().manual_seed(1)
    x, own, d_final = (torch.randn(B, H, D, E, generator=gen).to(DEVICE) for _ in range(3))
    a = (-torch.rand(B, H, generator=gen) * 3).to(DEVICE) if has_decay else None
    mine = header.as_tensor(_header(8, 1), x)
    msg = torch.cat([x.reshape(-1), header.as_tensor(_header(9 if mismatch else 8, 0), x)])
    late, end = checked_step(msg, mine, own, a, d_final if with_final else None, seal=seal,
                             checked=header.CHECKED.stop)
    ref_late = x + (d_final if with_final else 0)
    ref_end = own + (ref_late if a is None else torch.exp(a)[..., None, None] * ref_late)
    state = end[: x.numel()].view(x.shape) if seal else end
    if seal:  # the next message carries this rank's header, RELAYED after a mismatch
        relayed = mine.clone()
        relayed[header.STATUS_AT] = header.RELAYED if mismatch else header.OK
        assert torch.equal(end[x.numel():], relayed)
    if mismatch:
        assert late.isnan().all() and state.isnan().all()
    else:
        assert_close_rms(late, ref_late.double(), 1e-6, "late")
        assert_close_rms(state, ref_end.double(), 1e-6, "end")


def _record(P):
    from lasp_fx.distributed import watch

    return torch.zeros(P + 1, watch.ROW, device=DEVICE)


@pytest.mark.parametrize("mismatch", [None, 0, 2], ids=["same", "rank0_differs", "rank2_differs"])
@pytest.mark.parametrize("forward", [True, False], ids=["forward", "backward"])
def test_combination_records_each_differing_row_in_the_watch(forward, mismatch):
    """Each row whose header differs is written with its flag, and this rank's own header; nothing when none differs."""
    from lasp_fx.distributed import header

    P, rank = 3, 1
    rows = _rows(P, True, torch.float32, seed=5)[0].to(DEVICE)
    heads = [_header(6 if j == mismatch else 8, j) for j in range(P)]
    tails = torch.stack([header.as_tensor(h, rows) for h in heads])
    own = header.as_tensor(_header(8, rank), rows)
    record = _record(P)
    late, end = combine_gathered(torch.cat([rows, tails], 1), (B, H, D, E), rank, forward, True, None,
                                 own_tail=own, checked=header.CHECKED.stop, watch=record)
    if mismatch is None:
        assert not record.any() and torch.isfinite(end).all()
        return
    assert late.isnan().all() and end.isnan().all()
    assert record[:, 0].tolist() == [float(j in (mismatch, P)) for j in range(P + 1)]
    assert header.Header.decode(record[mismatch, 1:].tolist()) == heads[mismatch]
    assert torch.equal(record[P, 1:].cpu(), own.cpu())


@pytest.mark.parametrize("seal", [False, True], ids=["last", "sends_on"])
@pytest.mark.parametrize("mismatch", [False, True], ids=["same", "other_length"])
def test_ring_link_records_a_differing_header_and_relays_it(mismatch, seal):
    """checked_step writes a differing header as rank `src`'s and seals the next message RELAYED (recorded next)."""
    from lasp_fx.distributed import header
    from lasp_fx.distributed.kernels.gathered import checked_step

    P = 3
    x, own = (torch.randn(B, H, D, E, generator=torch.Generator().manual_seed(s)).to(DEVICE) for s in (2, 3))
    mine = header.as_tensor(_header(8, 1), x)
    theirs = _header(9 if mismatch else 8, 0)
    msg = torch.cat([x.reshape(-1), header.as_tensor(theirs, x)])
    record = _record(P)
    _, end = checked_step(msg, mine, own, None, None, seal=seal, checked=header.CHECKED.stop, watch=record, src=0)
    if not mismatch:
        assert not record.any()
    else:
        assert record[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
        assert header.Header.decode(record[0, 1:].tolist()) == theirs
        assert torch.equal(record[P, 1:].cpu(), mine.cpu())
    if seal:
        sent = header.Header.decode(end[x.numel():].tolist())
        assert sent.status == (header.RELAYED if mismatch else header.OK)
        assert sent.key() == _header(8, 1).key() and sent.rank == 1
        record = _record(P)  # the next rank (2): a relayed header differs from its own in its status
        checked_step(end, header.as_tensor(_header(8, 2), x), own, checked=header.CHECKED.stop, watch=record, src=1)
        assert record[1, 0].item() == float(mismatch)
