"""GPU check of the failure-behaviour kernels: header checks inside the exchanges, and -inf gates.

    PYTHONPATH=. python bench/check_faults_gpu.py --json $OUT/faults.json        # ~1 min on one GPU

1. The ring's link kernel (distributed/kernels/gathered.checked_step) against PyTorch's step in float64:
   with and without decay, d_final and sealing; a mismatched header gives NaN, never a number.
2. The all-gather's combination kernel with every row's header checked (P = 3, every rank).
3. The peer-memory kernel with headers in its slots, P = 3 ranks simulated on one GPU (as
   bench/check_peer_gpu.py): equal headers give the float64 chain; one rank's other length
   gives NaN on the ranks that combine its state, and no rank hangs.
4. -inf gates (state resets) through the op on the GPU (Triton kernels, fp32 and bf16): finite,
   and the output equals the op run on the tokens before and after each reset.
Exits 1 on any failure; the JSON holds every check's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

import lasp_fx
from lasp_fx.cli.timing import card
from lasp_fx.distributed import header
from lasp_fx.distributed.combine import step
from lasp_fx.distributed.kernels import peer as peer_kernel
from lasp_fx.distributed.kernels.gathered import checked_step, combine_gathered
from lasp_fx.numerics import rel_rms

from check_peer_gpu import buffers, reference  # the simulated ranks' buffers, the float64 chain (same shape)

DEV = torch.device("cuda")
B, H, D, E = 1, 16, 128, 128
CHECKED = header.CHECKED.stop


def _tail(T, rank=0):
    q = torch.zeros(B, T, H, D)
    return header.as_tensor(header.make(q, q, torch.zeros(B, T, H, E), None, 1.0, "ring", "forward", rank),
                            torch.empty(0, device=DEV))


def ring_link(results):
    gen = torch.Generator(device=DEV).manual_seed(0)
    x, own, d_final = (torch.randn(B, H, D, E, device=DEV, generator=gen, dtype=torch.float64) for _ in range(3))
    a = -torch.rand(B, H, device=DEV, generator=gen, dtype=torch.float64) * 3
    ok = True
    for has_decay in (False, True):
        for with_final in (False, True):
            for seal in (False, True):
                for mismatch in (False, True):
                    msg = torch.cat([x.float().reshape(-1), _tail(9 if mismatch else 8)])
                    late, end = checked_step(msg, _tail(8, 1), own.float(), a.float() if has_decay else None,
                                             d_final.float() if with_final else None, seal=seal, checked=CHECKED)
                    state = end[: x.numel()].view(x.shape) if seal else end
                    ref_late = x + d_final if with_final else x
                    ref_end = step(ref_late, a if has_decay else None, own)
                    if mismatch:
                        good = bool(late.isnan().all() and state.isnan().all())
                        err = None
                    else:
                        err = max(rel_rms(late, ref_late), rel_rms(state, ref_end))
                        good = err < 1e-6
                    if seal:
                        good &= bool(torch.equal(end[x.numel():], _tail(8, 1)))
                    ok &= good
                    results.append(dict(check="ring link", decay=has_decay, d_final=with_final, seal=seal,
                                        mismatch=mismatch, err=err, ok=good))
    return ok


def gathered(results):
    P, ok = 3, True
    gen = torch.Generator(device=DEV).manual_seed(1)
    states = torch.randn(P, B, H, D, E, device=DEV, generator=gen, dtype=torch.float64)
    decays = -torch.rand(P, B, H, device=DEV, generator=gen, dtype=torch.float64) * 2
    for mismatch in (False, True):
        rows = torch.cat([states.reshape(P, -1), decays.reshape(P, -1)], 1).float()
        tails = torch.stack([_tail(7 if mismatch and j == 1 else 8, j) for j in range(P)])
        rows = torch.cat([rows, tails], 1)
        for rank in range(P):
            for forward in (True, False):
                if (forward and rank == 0) or (not forward and rank == P - 1):
                    continue
                late, end = combine_gathered(rows, (B, H, D, E), rank, forward, True, None, _tail(8, rank), CHECKED)
                if mismatch:
                    good, err = bool(late.isnan().all() and end.isnan().all()), None
                else:
                    ref_late, ref_end = reference(states, decays, rank, forward)
                    err = max(rel_rms(late, ref_late), rel_rms(end, ref_end))
                    good = err < 1e-6
                ok &= good
                results.append(dict(check="all-gather combination", rank=rank, forward=forward, mismatch=mismatch,
                                    err=err, ok=good))
    return ok


def peer(results):
    P, ok = 3, True
    for culprit in (None, 0):
        bufs = buffers(P, DEV)
        streams = [torch.cuda.Stream() for _ in range(P)]
        gen = torch.Generator(device=DEV).manual_seed(2)
        x = torch.randn(P, B, H, D, E, device=DEV, generator=gen, dtype=torch.float64)
        a = -torch.rand(P, B, H, device=DEV, generator=gen, dtype=torch.float64) * 2
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
        outs = [None] * P
        for r in reversed(range(P)):
            with torch.cuda.stream(streams[r]):
                outs[r] = peer_kernel.exchange(x[r].float(), a[r].float(), None, r, P, True, bufs[r],
                                               own_tail=_tail(7 if r == culprit else 8, r), checked=CHECKED)
        torch.cuda.synchronize()
        for r in range(1, P):
            late, end = outs[r]
            if culprit is not None and r > culprit:
                good, err = bool(late.isnan().all() and end.isnan().all()), None
            else:
                ref_late, ref_end = reference(x, a, r, True)
                err = max(rel_rms(late, ref_late), rel_rms(end, ref_end))
                good = err < 1e-6
            good &= int(bufs[r].flags.abs().sum()) == 0
            ok &= good
            results.append(dict(check="peer kernel", rank=r, culprit=culprit, err=err, ok=good))
    return ok


def resets(results):
    ok = True
    T, h = 4096, 4
    resets_at = {0: 1000, 1: 64, 2: 4095, 3: 2049}  # head: position (chunk edges and inside)
    gen = torch.Generator(device=DEV).manual_seed(3)
    x = {n: torch.randn(1, T, h, 64, device=DEV, generator=gen, dtype=torch.float64) for n in "qkv"}
    g = torch.nn.functional.logsigmoid(torch.randn(1, T, h, device=DEV, generator=gen, dtype=torch.float64) + 2)
    for head, t in resets_at.items():
        g[0, t, head] = float("-inf")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        q, k, v = (x[n].to(dtype) for n in "qkv")
        o = lasp_fx.linear_attention(q, k, v, g.float())
        ref = torch.empty_like(x["q"])
        for head, t in resets_at.items():
            for lo, hi in ((0, t), (t, T)):
                gs = g[:, lo:hi, head:head + 1].clone()
                gs[:, 0] = 0.0 if lo == t else gs[:, 0]
                ref[:, lo:hi, head:head + 1] = lasp_fx.linear_attention(
                    *(x[n][:, lo:hi, head:head + 1] for n in "qkv"), gs)
        err = rel_rms(o, ref)
        good = bool(torch.isfinite(o).all()) and err < tol
        ok &= good
        results.append(dict(check="-inf gates", dtype=str(dtype), err=err, ok=good))
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run under TRITON_INTERPRET=1 (no peer check)")
    args = p.parse_args()
    global DEV
    DEV = torch.device(args.device)
    results, ok = [], True
    for check in (ring_link, gathered, peer, resets) if DEV.type == "cuda" else (ring_link, gathered, resets):
        try:
            passed = check(results)
        except Exception as e:  # noqa: BLE001 - recorded, the other checks still run
            results.append(dict(check=check.__name__, error=f"{type(e).__name__}: {e}", ok=False))
            passed = False
        ok &= passed
        print(f"{check.__name__}: {'ok' if passed else 'FAILED'}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card(DEV), "ok": ok, "results": results}, f, indent=1)
    print("ALL OK" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
