"""Packed documents (cu_seqlens / document_ids): packed == each document run alone, on one device and across ranks.

Every reference runs each document alone in float64 (tests/helpers/workers_packed.documents_alone),
never a packed row, and every output and gradient is compared: q, k, v, the decay (per head and per
token), the initial state (which flows into the first document) and the final state (the last
document's). The Triton kernels run under the CPU interpreter at tiny sizes.
"""

import pytest
import torch

import lasp_fx
from lasp_fx.ops import documents, naive
from tests.helpers import workers_packed
from lasp_fx.numerics import random_inputs, rel_rms
from lasp_fx.distributed.spawn import run_spawned

SCALE = workers_packed.SCALE
DECAYS = ["none", "const", "gate"]

# Packed rows of 150 tokens (chunks of 64: edges at 64 and 128): where the documents start.
LAYOUTS = {
    "one_doc": [0, 150],
    "mid_chunk": [0, 37, 101, 150],
    "chunk_edges": [0, 64, 128, 150],
    "one_token_docs": [0, 1, 2, 63, 64, 65, 149, 150],
    "many": [0, 5, 6, 40, 70, 71, 100, 127, 129, 140, 150],
}


def _packed_vs_alone(a: dict, cu: list, run, dtype=torch.float64, device="cpu") -> dict:
    """Relative-RMS errors of `run(**leaves) -> (o, final_state)` against each document run alone
    (leaves of `dtype` on `device`; the reference in float64 on the CPU)."""
    gen = torch.Generator().manual_seed(7)
    B, T, H, E = *a["q"].shape[:3], a["v"].shape[-1]
    w_o = torch.randn(B, T, H, E, generator=gen, dtype=torch.float64)
    w_s = torch.randn(B, H, a["q"].shape[-1], E, generator=gen, dtype=torch.float64)
    ref = {n: t.detach().double().requires_grad_() for n, t in a.items()}
    ids = documents.ids_from_cu_seqlens(torch.tensor(cu))
    o_ref, (s_ref,) = workers_packed.documents_alone(ref, ids, [T])
    ((o_ref * w_o).sum() + (s_ref * w_s).sum()).backward()
    got = {n: t.detach().to(device, dtype).requires_grad_() for n, t in a.items()}
    o, s = run(**got)
    ((o.double().cpu() * w_o).sum() + (s.double().cpu() * w_s).sum()).backward()
    errors = {"o": rel_rms(o, o_ref), "final_state": rel_rms(s, s_ref)}
    errors.update({f"d{n}": rel_rms(got[n].grad, ref[n].grad) for n in got})
    return errors


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_op_packed_equals_documents_alone(layout, decay, initial_state):
    """The public op (CPU: the chunked PyTorch path) in float64, every gradient."""
    cu = LAYOUTS[layout]
    a = random_inputs(1, cu[-1], 4, 8, 6, kv_heads=2, decay=decay, initial_state=initial_state,
                      generator=torch.Generator().manual_seed(len(cu)))

    def run(q, k, v, log_decay=None, initial_state=None):
        return lasp_fx.linear_attention(q, k, v, log_decay, scale=SCALE, initial_state=initial_state,
                                        output_final_state=True, cu_seqlens=torch.tensor(cu, dtype=torch.int32))

    errors = _packed_vs_alone(a, cu, run)
    assert max(errors.values()) < 1e-12, errors


@pytest.mark.parametrize("decay", DECAYS)
def test_naive_references_take_documents(decay):
    """Both float64 references with `runs` equal each document run alone (the recurrence resets)."""
    cu = LAYOUTS["many"]
    a = random_inputs(1, cu[-1], 2, 4, 4, decay=decay, initial_state=True, generator=torch.Generator().manual_seed(3))
    runs = documents.runs_from_cu_seqlens(torch.tensor(cu), 0, cu[-1])
    for reference in (naive.recurrent_linear_attention, naive.quadratic_linear_attention):
        def run(q, k, v, log_decay=None, initial_state=None, reference=reference):
            return reference(q, k, v, log_decay, scale=SCALE, initial_state=initial_state, runs=runs)

        errors = _packed_vs_alone(a, cu, run)
        assert max(errors.values()) < 1e-12, (reference.__name__, errors)


@pytest.mark.parametrize("padding", ["left", "right", "none"])
def test_document_ids_rows_with_padding(padding):
    """document_ids [B, T]: each row's documents as if alone; padding (label 0) is a document no real token sees."""
    B, T = 2, 40
    ids = torch.tensor([[1] * 10 + [2] * 25 + [3] * 5, [4] * 17 + [5] * 23])
    if padding == "left":
        ids[1, :6] = 0
    elif padding == "right":
        ids[0, 31:] = 0
    a = random_inputs(B, T, 2, 4, 5, decay="gate", initial_state=True, generator=torch.Generator().manual_seed(5))
    leaves = {n: t.clone().requires_grad_() for n, t in a.items()}
    o, s = lasp_fx.linear_attention(leaves["q"], leaves["k"], leaves["v"], leaves["log_decay"], scale=SCALE,
                                    initial_state=leaves["initial_state"], output_final_state=True, document_ids=ids)
    w = torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ((o * w).sum() + s.sum()).backward()
    ref = {n: t.clone().requires_grad_() for n, t in a.items()}
    o_ref, (s_ref,) = workers_packed.documents_alone(ref, ids, [T])
    ((o_ref * w).sum() + s_ref.sum()).backward()
    assert rel_rms(o, o_ref) < 1e-12 and rel_rms(s, s_ref) < 1e-12
    for n in leaves:
        assert rel_rms(leaves[n].grad, ref[n].grad) < 1e-12, n


def test_cu_seqlens_and_document_ids_agree():
    cu = torch.tensor(LAYOUTS["many"])
    ids = documents.ids_from_cu_seqlens(cu)
    assert documents.cu_seqlens_from_ids(ids).tolist() == cu.tolist()
    positions = torch.cat([torch.arange(int(e - s)) for s, e in zip(cu[:-1], cu[1:])])[None]
    assert documents.cu_seqlens_from_position_ids(positions).tolist() == cu.tolist()
    for rank in range(3):  # each rank's runs index: the same partition from both forms (labels may differ)
        from_cu = documents.runs_from_cu_seqlens(cu, rank * 50, 50)
        from_ids = documents.runs_from_ids(ids, rank * 50, 50)
        assert torch.equal(from_cu - from_cu[:, :1], from_ids - from_ids[:, :1])
    a = random_inputs(1, 150, 2, 4, 4, decay="gate", generator=torch.Generator().manual_seed(2))
    o_cu = lasp_fx.linear_attention(a["q"], a["k"], a["v"], a["log_decay"], cu_seqlens=cu)
    o_ids = lasp_fx.linear_attention(a["q"], a["k"], a["v"], a["log_decay"], document_ids=ids * 7 - 3)  # any labels
    assert torch.equal(o_cu, o_ids)


# ----------------------------------------------------------------------------- Triton (CPU interpreter)
TRITON_CASES = [  # (layout, decay, chunks per segment)
    pytest.param("many", "none", 1, id="many-none-nsub1"),
    pytest.param("one_token_docs", "const", 1, id="one_token_docs-const-nsub1"),
    pytest.param("chunk_edges", "gate", 2, id="chunk_edges-gate-nsub2"),
    pytest.param("mid_chunk", "gate", 1, id="mid_chunk-gate-nsub1"),
]


def _triton():
    pytest.importorskip("triton", reason="triton is not installed")
    pytest.importorskip("numpy", reason="Triton's CPU interpreter needs numpy")
    from lasp_fx.ops import triton as tk

    return tk


class _TritonOp(torch.autograd.Function):
    """(o, final state) through the Triton primitives and their backward; with `late`, the initial state
    and the final state's gradient arrive through LASP's hooks, as from the ranks before and after."""

    @staticmethod
    def forward(ctx, q, k, v, g, s0, nsub, runs, late):
        hook = (lambda local: (lambda: s0)) if late and s0 is not None else None
        tk = _triton()
        o, s = tk.fwd(q, k, v, g, SCALE, None if late else s0, state_hook=hook, nsub=nsub, runs=runs)
        ctx.save_for_backward(q, k, v, g, s0)
        ctx.nsub, ctx.runs, ctx.late = nsub, runs, late
        return o, s

    @staticmethod
    def backward(ctx, do, ds):
        q, k, v, g, s0 = ctx.saved_tensors
        tk = _triton()
        hook = (lambda local: (lambda: ds)) if ctx.late else None
        dq, dk, dv, dG, ds_in = tk.bwd(q, k, v, g, SCALE, do.contiguous(), s0, None if ctx.late else ds,
                                       state_hook=hook, nsub=ctx.nsub, decay_grad=g is not None, runs=ctx.runs)
        dg = None if g is None else tk.log_decay_grad(dG, g)
        return dq, dk, dv, dg, None if s0 is None else ds_in, None, None, None


def _triton_run(nsub, runs, late=False):
    def run(q, k, v, log_decay=None, initial_state=None):
        return _TritonOp.apply(q, k, v, log_decay, initial_state, nsub, runs.to(q.device), late)

    return run


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("layout, decay, nsub", TRITON_CASES)
def test_triton_packed_equals_documents_alone(layout, decay, nsub, initial_state):
    _triton()
    _check_triton_vs_alone(LAYOUTS[layout], decay, nsub, initial_state)


def _check_triton_vs_alone(cu, decay, nsub, initial_state, heads=2, dim=16):
    a = random_inputs(1, cu[-1], heads, dim, dim, kv_heads=1, decay=decay, initial_state=initial_state,
                      generator=torch.Generator().manual_seed(11))
    runs = documents.runs_from_cu_seqlens(torch.tensor(cu), 0, cu[-1])
    errors = _packed_vs_alone(a, cu, _triton_run(nsub, runs), dtype=torch.float32, device=DEVICE)
    assert max(errors.values()) < 2e-5, errors  # float32 kernels against float64


# Segments of 4 chunks over 300 tokens (the second one's last 3 chunks past T): chunks with no
# start between chunks with one, several starts in a chunk, a start at a chunk and a segment edge,
# and the kernels' second loop over a segment's chunks with starts (common.py).
SEGMENTS = [0, 10, 11, 70, 130, 200, 256, 290, 300]


@pytest.mark.parametrize("decay", DECAYS)
def test_triton_segments_of_chunks_with_and_without_starts(decay):
    _triton()
    _check_triton_vs_alone(SEGMENTS, decay, 4, initial_state=True)


def test_triton_segments_longer_than_the_chunks_told_apart():
    """Segments of 67 chunks: past common.MAX_CUTS (64) a chunk is taken to hold a start, which must
    change nothing; here only chunks past it do (64 mid-chunk, 65 at its first token, not 66)."""
    _triton()
    _check_triton_vs_alone([0, 64 * 64 + 7, 65 * 64, 67 * 64 - 5], "gate", 67, initial_state=True, heads=1)


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked-loop", "packed-loop"])
@pytest.mark.parametrize("packed_warps", [None, 4], ids=["state-dq-dk-kernels", "out-dv-kernels"])
def test_packed_output_and_dv_kernels_tune_over_four_warps_only(packed, packed_warps, monkeypatch):
    """The packed output and dv kernels at 8 warps computed wrong outputs on the H100 (record 2026-12-07_sixth):
    their prune keeps the 4-warp configs for the packed loop's launch; every other kernel and launch keeps every
    config (with documents, the segments without a start inside run the unpacked loop in a launch of their own)."""
    from lasp_fx.ops.triton import common

    monkeypatch.setenv("LASP_FX_AUTOTUNE", "1")
    configs = [common.config(8, BV=64), common.config(4, BV=64), common.config(8, BV=128)]
    kept = common._pruner(packed_warps)(configs, {}, HAS_RUNS=True, PACKED=packed)
    assert kept == ([configs[1]] if packed and packed_warps else configs)


def test_the_output_and_dv_kernels_are_the_ones_held_to_four_warps(monkeypatch):
    _triton()
    from lasp_fx.ops.triton import backward, common, forward, states

    monkeypatch.setenv("LASP_FX_AUTOTUNE", "1")
    configs = [common.config(8, BV=64), common.config(4, BV=64)]

    def warps(kernel):  # the warps of the configs the kernel's autotuner keeps for the packed loop
        return {c.num_warps for c in kernel.early_config_prune(configs, {}, HAS_RUNS=True, PACKED=True)}

    assert warps(forward._out_kernel) == warps(backward._dv_kernel) == {4}
    assert warps(states._local_kernel) == warps(backward._dq_kernel) == warps(backward._dk_kernel) == {4, 8}


SLICES = [  # rank 1 of 2 of a 300-token row: its first document continues, or starts at its first token
    pytest.param([0, 40, 190, 300], id="continues"),
    pytest.param([0, 40, 150, 230, 300], id="starts_at_edge"),
    pytest.param([0, 100, 300], id="no_start_inside"),
]


@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("cu", SLICES)
def test_triton_slice_with_late_states(cu, decay):
    """A rank's slice: the state from the rank before and the final state's gradient arrive late
    (LASP's hooks); they reach only the slice's first (last) document."""
    _triton()
    a = random_inputs(1, 150, 2, 16, 16, decay=decay, initial_state=True, generator=torch.Generator().manual_seed(4))
    runs = documents.slice_runs(torch.tensor(cu), None, 1, 150, rank=1, world=2)

    def reference(q, k, v, log_decay=None, initial_state=None):  # naive.py with the slice's runs: tested above
        return naive.quadratic_linear_attention(q, k, v, log_decay, scale=SCALE, initial_state=initial_state, runs=runs)

    gen = torch.Generator().manual_seed(9)
    w_o = torch.randn(1, 150, 2, 16, generator=gen, dtype=torch.float64)
    w_s = torch.randn(1, 2, 16, 16, generator=gen, dtype=torch.float64)
    results = []
    triton_run = _triton_run(1, runs, late=True)
    for run, dtype, device in ((reference, torch.float64, "cpu"), (triton_run, torch.float32, DEVICE)):
        x = {n: t.detach().to(device, dtype).requires_grad_() for n, t in a.items()}
        o, s = run(**x)
        ((o.double().cpu() * w_o).sum() + (s.double().cpu() * w_s).sum()).backward()
        results.append([o, s, *(x[n].grad for n in sorted(x))])
    errors = [rel_rms(g, r) for g, r in zip(results[1], results[0])]
    assert max(errors) < 2e-5, errors


# ----------------------------------------------------------------------------- across ranks
DIST_LAYOUTS = ["spans3", "edges", "ones", "random"]


def _dist_cases(P: int) -> dict:
    cases = {
        f"{layout}-{decay}": dict(L=70, H=2, Hk=1, D=6, E=5, decay=decay, init=True,
                                  cu=workers_packed.layout(layout, 70, P))
        for layout in DIST_LAYOUTS for decay in DECAYS
    }
    ids = torch.tensor([[1] * (35 * P) + [2] * (35 * P), [0] * 20 + [3] * (70 * P - 30) + [0] * 10])  # padding too
    cases["ids_b2-gate"] = dict(L=70, B=2, H=2, D=4, E=4, decay="gate", init=False, ids=ids.tolist())
    return cases


WORLDS = [pytest.param(1, "ring", id="P1")] + [  # one rank runs the single-device op: no exchange to choose
    pytest.param(p, m, id=f"P{p}-{m}") for p in (2, 3, 4) for m in ("ring", "allgather")
]


@pytest.mark.parametrize("world_size, method", WORLDS)
def test_distributed_packed_equals_documents_alone(world_size, method):
    """Every rank's output, final state and gradients against each document run alone (float64, gloo):
    documents spanning three ranks, starts at rank and chunk edges, 1-token documents, every decay form."""
    results = run_spawned(workers_packed.check_cases, world_size, _dist_cases(world_size), method, timeout=300.0)
    bad = {
        (rank, cid): {n: e for n, e in c["errors"].items() if not e < 1e-12}
        for rank, r in enumerate(results) for cid, c in r.items()
        if not c["finite"] or max(c["errors"].values()) >= 1e-12
    }
    assert not bad, bad


def test_distributed_cu_seqlens_must_cover_every_rank():
    messages = run_spawned(workers_packed.bad_total, 2, 6)
    assert all("must end at the packed length 12 (all ranks' tokens" in m for m in messages), messages


# ----------------------------------------------------------------------------- refused inputs
BAD = [
    pytest.param(dict(cu_seqlens=torch.tensor([0, 5, 3, 8])), ValueError, "strictly increasing", id="not_increasing"),
    pytest.param(dict(cu_seqlens=torch.tensor([0, 4, 4, 8])), ValueError, "strictly increasing", id="empty_document"),
    pytest.param(dict(cu_seqlens=torch.tensor([1, 4, 8])), ValueError, "must start at 0", id="not_from_0"),
    pytest.param(dict(cu_seqlens=torch.tensor([0, 4, 7])), ValueError, "must end at the packed length 8",
                 id="last_not_T"),
    pytest.param(dict(cu_seqlens=torch.tensor([0.0, 8.0])), TypeError, "int32 or int64", id="float_offsets"),
    pytest.param(dict(cu_seqlens=torch.tensor([[0, 8]])), ValueError, "1-D", id="2d_offsets"),
    pytest.param(dict(cu_seqlens=torch.tensor([0, 4, 8]), document_ids=torch.ones(1, 8, dtype=torch.long)),
                 ValueError, "not both", id="both_forms"),
    pytest.param(dict(document_ids=torch.ones(1, 7, dtype=torch.long)), ValueError, r"\[B, T\] = \[1, 8\]",
                 id="ids_wrong_shape"),
    pytest.param(dict(document_ids=torch.ones(1, 8)), TypeError, "integer tensor", id="ids_float"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD)
def test_bad_documents_are_refused(kwargs, error, match):
    x = torch.randn(1, 8, 2, 4)
    with pytest.raises(error, match=match):
        lasp_fx.linear_attention(x, x, x, **kwargs)


def test_cu_seqlens_needs_one_packed_row():
    x = torch.randn(2, 8, 2, 4)
    with pytest.raises(ValueError, match="batch size 1, got 2"):
        lasp_fx.linear_attention(x, x, x, cu_seqlens=torch.tensor([0, 3, 8]))


@pytest.mark.parametrize("form", ["cu_seqlens", "document_ids"])
def test_packed_op_traces_as_one_node(form):
    """Under torch.compile (fullgraph) the packed op stays one custom-op call and gives the eager result
    (document ids: their runs are one custom op too, lasp_fx::document_runs, which parallelize shards)."""
    a = random_inputs(1, 70, 2, 4, 4, decay="gate", dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    cu = torch.tensor([0, 9, 64, 70])
    packing = {"cu_seqlens": cu} if form == "cu_seqlens" else {"document_ids": documents.ids_from_cu_seqlens(cu)}

    def f(q, k, v, g):
        return lasp_fx.linear_attention(q, k, v, g, **packing)

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert rel_rms(compiled(a["q"], a["k"], a["v"], a["log_decay"]), f(a["q"], a["k"], a["v"], a["log_decay"])) < 1e-6


# ----------------------------------------------------------------------------- parallelize()
PARALLEL = [  # (world size, cu_seqlens of a 24-token row, kernel the model calls)
    pytest.param(3, [0, 1, 3, 20, 24], "op", id="P3-op-document_over_3_ranks"),
    pytest.param(2, [0, 5, 12, 13, 24], "fla", id="P2-fla_chunk_simple_gla-start_at_rank_edge"),
]


@pytest.mark.parametrize("world_size, cu, kernel", PARALLEL)
def test_parallelize_model_taking_cu_seqlens(world_size, cu, kernel):
    """A model whose forward takes cu_seqlens (or calls fla's kernel with them) trains under parallelize()
    as on one process: every rank's logits and every parameter gradient."""
    if kernel == "fla":
        pytest.importorskip("fla")
    case = dict(T=24, cu=cu, kernel=kernel)
    results = run_spawned(workers_packed.parallel_model, world_size, case, timeout=600.0)
    bad = {rank: {n: e for n, e in r.items() if not e < 1e-10} for rank, r in enumerate(results)}
    assert not any(bad.values()), bad


def _labels(cu: list, labels: list) -> list:
    """Per-token labels of the documents between the offsets `cu`, document i labelled labels[i]."""
    return [label for a, z, label in zip(cu[:-1], cu[1:], labels) for _ in range(z - a)]


IDS = [  # (world size, cu_seqlens of a 24-token row, each document's label: reused, 0 for padding)
    pytest.param(1, [0, 5, 13, 24], [1, 2, 1], id="P1"),
    pytest.param(2, [0, 5, 12, 13, 24], [1, 2, 1, 0], id="P2-start_at_rank_edge-padding_run"),
    pytest.param(3, [0, 1, 3, 8, 20, 24], [7, 3, 7, 3, 7], id="P3-start_at_rank_edge-document_over_2_ranks"),
]


@pytest.mark.parametrize("world_size, cu, labels", IDS)
def test_parallelize_model_taking_document_ids(world_size, cu, labels):
    """document_ids sharded with the batch: each rank's runs take the label before its slice (a tiny
    all-gather), so a document crossing a rank edge continues and one starting there does not; labels
    reused by documents that do not touch each other are other documents, as on one device."""
    case = dict(T=24, cu=cu, kernel="ids", ids=_labels(cu, labels))
    results = run_spawned(workers_packed.parallel_model, world_size, case, timeout=600.0)
    bad = {rank: {n: e for n, e in r.items() if not e < 1e-10} for rank, r in enumerate(results)}
    assert not any(bad.values()), bad
