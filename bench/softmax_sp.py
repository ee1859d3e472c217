"""A hybrid's softmax layer as rank 3 of P = 4 at 32K tokens per rank, on one GPU, side by side.

Run on one GPU from the repository root:
    PYTHONPATH=. python bench/softmax_sp.py --json $OUT/softmax_sp.json
    PYTHONPATH=. python bench/softmax_sp.py --impls lasp_fx,ulysses --tlocal 8192    # a subset, smaller

Rank r of P holds s = --tlocal tokens; its softmax layer attends from its s queries over the keys of
ranks 0..r. Each implementation runs that rank's share (the last rank's, the most work unless the
schedule balances it) on this GPU, fwd+bwd, B=1, H=16, D=128, bf16; communication is left out
(rows say what each would move). Times are medians of CUDA-event timed iterations; memory is the
peak allocated during one fwd+bwd above its inputs.
- lasp_fx: what parallelize() runs (`distributed/softmax_sp.py`): over the all-gathered k, v,
  the first half of the rank's queries and the second half of rank P-1-r's (swapped in by an
  all-to-all: every rank the same work), tiles of at most s x s by the flash kernel merged by
  log-sum-exp. Moves: one all-gather of k and v (and a reduce-scatter of their gradients), s/2
  queries and outputs (and their gradients) with one partner.
- lasp_fx_unbalanced: the same without the swap: the last rank's s queries over all P blocks.
- lasp_fx_docs: lasp_fx with packed 4K-token documents (document ids).
- dense_mask: the path before it: SDPA with an s x (r+1)s boolean mask (memory-efficient kernel).
- torch_cp / torch_cp_balanced: torch's own `context_parallel` ring SDPA, run as rank 3 of a
  fake process group of 4 (collectives are no-ops: the received k, v are garbage, the kernels and
  their schedule are torch's own); without and with its head-tail load balancing.
- ulysses: all-to-all from tokens to heads around SDPA: flash causal SDPA over all P*s tokens with
  H/P heads. Moves: q, k, v, o (and gradients), (P-1)/P of each.
Before timing, the lasp_fx op is checked on this GPU against float64 (bf16 and fp32, GQA, document
ids): the "check" rows.
"""

import argparse
import json
import math
import statistics
import time
import traceback

import torch
import torch.nn.functional as F

from lasp_fx.ops import softmax_plan, softmax_tile
from lasp_fx.ops.softmax_tail import tail_softmax_attention
from lasp_fx.numerics import rel_rms
from lasp_fx.ops.softmax_naive import tail_softmax_reference

IMPLS = ["lasp_fx", "lasp_fx_unbalanced", "lasp_fx_docs", "ulysses", "torch_cp", "torch_cp_balanced", "dense_mask"]
DOC_LEN = 4096


DEV = "cuda"


def _time(step, warm, reps):
    for _ in range(warm):
        step()
    times = []
    for _ in range(reps):
        if DEV == "cpu":  # a smoke run: wall time
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak(step):
    if DEV == "cpu":
        step()
        return None, None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30, base / 2**30


def _leaves(*shapes, dtype, seed=0):
    gen = torch.Generator(device=DEV).manual_seed(seed)
    return [torch.randn(s, device=DEV, dtype=dtype, generator=gen).requires_grad_() for s in shapes]


def _fwd_bwd(fn, leaves, do):
    def step():
        for x in leaves:
            x.grad = None
        out = fn()
        out.backward(do)
        return out
    return step


def _lasp_fx(a, docs=False, balance=True):
    """What `causal_attention_over_ranks` computes on rank r = P-1 (collectives left out): with
    `balance`, the first half of its queries and the second half of rank 0's (swapped in), else
    all its queries; over the gathered k, v."""
    s, P = a.tlocal, a.world
    r, T, h = P - 1, s * P, s // 2
    q, k, v = _leaves((1, a.heads, s, a.dim), (1, a.heads, T, a.dim), (1, a.heads, T, a.dim), dtype=a.dt)
    ids = (torch.arange(T, device=DEV) // DOC_LEN + 1)[None] if docs else None

    def tail(queries, end):  # queries at global positions end - len .. end - 1
        cut = None if ids is None else ids[:, :end]
        return tail_softmax_attention(queries, k[:, :, :end], v[:, :, :end], None, cut)

    def fn():
        if not balance:
            return tail(q, (r + 1) * s)
        partner = P - 1 - r  # its second half stands in for the one the all-to-all brings: same shape
        return torch.cat([tail(q[:, :, :h], r * s + h), tail(q[:, :, h:], (partner + 1) * s)], 2)
    return _fwd_bwd(fn, [q, k, v], torch.randn_like(q))


def _dense_mask(a):
    s, T, r = a.tlocal, a.tlocal * a.world, a.world - 1
    q, k, v = _leaves((1, a.heads, s, a.dim), (1, a.heads, T, a.dim), (1, a.heads, T, a.dim), dtype=a.dt)

    def fn():  # as distributed/seq_ops.py built it before the tiles
        rows = torch.arange(s, device=DEV) + r * s
        mask = torch.arange(T, device=DEV)[None, :] <= rows[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _fwd_bwd(fn, [q, k, v], torch.randn_like(q))


def _ulysses(a):
    T, h = a.tlocal * a.world, a.heads // a.world
    q, k, v = _leaves(*[(1, h, T, a.dim)] * 3, dtype=a.dt)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def fn():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return _fwd_bwd(fn, [q, k, v], torch.randn_like(q))


_FAKE = {}


def _torch_cp(a, balanced):
    """torch's context_parallel as rank P-1 of a fake group of P (no-op collectives)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.nn.attention import SDPBackend, sdpa_kernel

    try:
        from torch.distributed.tensor.experimental._context_parallel._attention import _cp_options
    except ImportError:
        from torch.distributed.tensor.experimental._attention import _cp_options
    if "mesh" not in _FAKE:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", rank=a.world - 1, world_size=a.world, store=FakeStore())
        _FAKE["mesh"] = DeviceMesh(DEV, torch.arange(a.world))
    T = a.tlocal * a.world
    bufs = [torch.randn(1, a.heads, T, a.dim, device=DEV, dtype=a.dt) for _ in range(3)]
    _cp_options.enable_load_balance = balanced
    ctx = context_parallel(_FAKE["mesh"], buffers=bufs, buffer_seq_dims=[2, 2, 2], no_restore_buffers=set(bufs))
    ctx.__enter__()
    try:
        q, k, v = (b.detach().requires_grad_() for b in bufs)  # this rank's shards now

        def fn():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        step = _fwd_bwd(fn, [q, k, v], torch.randn_like(q))
    except BaseException:
        ctx.__exit__(None, None, None)
        raise
    step.close = lambda: ctx.__exit__(None, None, None)
    return step


MAKERS = {
    "lasp_fx": _lasp_fx,
    "lasp_fx_unbalanced": lambda a: _lasp_fx(a, balance=False),
    "lasp_fx_docs": lambda a: _lasp_fx(a, docs=True),
    "dense_mask": _dense_mask,
    "ulysses": _ulysses,
    "torch_cp": lambda a: _torch_cp(a, False),
    "torch_cp_balanced": lambda a: _torch_cp(a, True),
}


def _moved(name, a):
    """Elements each rank sends per layer, fwd+bwd (what the single-GPU run leaves out)."""
    s, P, H, D = a.tlocal, a.world, a.heads, a.dim
    gather = 2 * 2 * s * H * D * (P - 1)  # all-gather k, v; reduce-scatter dk, dv
    if name in ("lasp_fx", "lasp_fx_docs"):
        return gather + 4 * (s // 2) * H * D  # + half the queries and outputs, and their gradients, with a partner
    if name in ("lasp_fx_unbalanced", "dense_mask"):
        return gather
    if name.startswith("torch_cp"):  # k, v around the ring in forward and again in backward, dk, dv back
        return 2 * s * H * D * (P - 1) * 2 + 2 * s * H * D * P
    if name == "ulysses":
        return 2 * 4 * s * H * D * (P - 1) // P  # q, k, v, o out and back, and their gradients
    return None


def check(a) -> list:
    """The op on this GPU against float64: small odd sizes, rank 3 of 4, GQA, with and without documents."""
    rows = []
    s, P, H, Hk, D = 333, 4, 4, 2, 64
    K = s * P
    gen = torch.Generator().manual_seed(1)
    ids = torch.zeros(2, K, dtype=torch.long)  # 10 documents a row, cut at random, padding at row 0's end
    cuts = sorted(torch.randperm(K - 1, generator=gen)[:9].add(1).tolist())
    for b in range(2):
        for i, (lo, hi) in enumerate(zip([0] + cuts, cuts + [K])):
            ids[b, lo:hi] = i + 1
    ids[0, -5:] = 0
    ids = ids.to(DEV)
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float32, 2e-3)):
        for docs, max_tiles in ((False, softmax_plan.MAX_TILES), (True, softmax_plan.MAX_TILES), (True, 1)):
            row = {"dtype": str(dtype), "docs": docs, "masked": max_tiles == 1}
            try:
                row.update(_check_one(gen, ids if docs else None, s, H, Hk, D, dtype, max_tiles, tol))
            except Exception as e:  # noqa: BLE001 - a failing kernel is a result to report
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
            print("check", {k: v for k, v in row.items() if k != "trace"}, flush=True)
            rows.append(row)
    return rows


def _check_one(gen, ids, s, H, Hk, D, dtype, max_tiles, tol):
    K = ids.shape[1] if ids is not None else s * 4
    x = [torch.randn(2, h, n, D, generator=gen, dtype=torch.float64).to(DEV) for h, n in ((H, s), (Hk, K), (Hk, K))]
    w = torch.randn(2, H, s, D, generator=gen, dtype=torch.float64).to(DEV)
    low = [t.to(dtype).requires_grad_() for t in x]
    out = tail_softmax_attention(*low, None, ids, None, max_tiles)
    grads = torch.autograd.grad((out.double() * w).sum(), low)
    ref_in = [t.to(dtype).double().requires_grad_() for t in x]  # the same rounded inputs, in float64
    ref = tail_softmax_reference(*ref_in, 1 / math.sqrt(D), ids)
    ref_grads = torch.autograd.grad((ref * w).sum(), ref_in)
    errs = {"o": rel_rms(out, ref), **{f"d{n}": rel_rms(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    masked = ids is not None and max_tiles == 1
    return {"kernel": softmax_tile.kernel_for(low[0], low[1], low[2], masked), "errors": errs,
            "ok": all(e <= tol for e in errs.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tlocal", type=int, default=32768)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--device", default="cuda", help='"cpu": a smoke run of the script at tiny sizes')
    ap.add_argument("--json")
    a = ap.parse_args()
    global DEV
    DEV = a.device
    a.dt = torch.bfloat16
    meta = {"gpu": torch.cuda.get_device_name() if DEV == "cuda" else DEV, "torch": torch.__version__,
            "tlocal": a.tlocal, "world": a.world, "rank": a.world - 1, "heads": a.heads, "dim": a.dim, "dtype": "bf16", "reps": a.reps,
            "tiles_lasp_fx_unbalanced": len(softmax_plan.plan(1, a.tlocal, a.tlocal * a.world))}
    result = {**meta, "check": [] if a.no_check else check(a), "rows": []}

    def save():
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(result, fh, indent=1)
    save()
    for name in a.impls.split(","):
        row = {"impl": name, "moved_elements_per_rank": _moved(name, a)}
        t0, step = time.time(), None
        try:
            step = MAKERS[name](a)
            row["peak_gib"], row["inputs_gib"] = _peak(step)
            row["fwd_bwd_ms"] = _time(step, a.warm, a.reps)
        except Exception as e:  # noqa: BLE001 - an implementation that cannot run is a row, not the end
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
            row["trace"] = traceback.format_exc()[-3000:]
        finally:
            getattr(step, "close", lambda: None)()  # torch_cp: leave its context (SDPA unpatched)
        row["wall_s"] = round(time.time() - t0, 1)
        step = None
        if DEV == "cuda":
            torch.cuda.empty_cache()
        print({k: v for k, v in row.items() if k != "trace"}, flush=True)
        result["rows"].append(row)
        save()


if __name__ == "__main__":
    main()
