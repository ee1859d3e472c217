"""GPU check of the failure-behaviour kernels: header checks inside the exchanges, and -inf gates.

    PYTHONPATH=. python bench/check_faults_gpu.py --json $OUT/faults.json        # ~2 min on one GPU

1. The ring's link kernel (distributed/kernels/gathered.checked_step) against PyTorch's step in float64:
   with and without decay, d_final and sealing; a mismatched header gives NaN, never a number.
2. The all-gather's combination kernel with every row's header checked (P = 3, every rank).
3. The peer-memory kernel with headers in its slots, P = 3 ranks simulated on one GPU (as
   bench/check_peer_gpu.py): equal headers give the float64 chain; one rank's other length
   gives NaN on the ranks that combine its state, and no rank hangs.
4. -inf gates (state resets) through the op on the GPU (Triton kernels, fp32 and bf16): finite,
   and the output equals the op run on the tokens before and after each reset.
5. The watch (distributed/watch.py), P = 3 ranks simulated on one GPU with each exchange's kernels
   (ring links, all-gather combination, peer kernel) and each rank's Watch (pinned copy + CUDA
   event): a step where rank 2's slice is shorter gives NaN and raises nothing; the next step's
   first forward raises RankMismatchError on every rank, naming the values; a step after it is
   quiet again. The record's copy is queued behind a busy GPU without waiting (finish returns at
   once), and the next forward waits only for it.
6. Its cost: a call (the op's fwd+bwd on one GPU plus a forward and a backward ring link) with and
   without the flag path (the kernels' record, the copy + event after the backward, the next
   forward's read), medians of 20, at 8K and 32K tokens; and each part alone.
Exits 1 on any failure; the JSON holds every check's numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import lasp_fx
from lasp_fx.cli.timing import card, host_ms, inputs, median_ms
from lasp_fx.distributed import header, watch
from lasp_fx.distributed.combine import step
from lasp_fx.distributed.kernels import peer as peer_kernel
from lasp_fx.distributed.kernels.gathered import checked_step, combine_gathered
from lasp_fx.numerics import rel_rms

from check_peer_gpu import buffers, reference  # the simulated ranks' buffers, the float64 chain (same shape)

DEV = torch.device("cuda")
B, H, D, E = 1, 16, 128, 128
T0 = time.monotonic()
CHECKED = header.CHECKED.stop


def _tail(T, rank=0, direction="forward"):
    q = torch.zeros(B, T, H, D)
    return header.as_tensor(header.make(q, q, torch.zeros(B, T, H, E), None, 1.0, "ring", direction, rank),
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
                    if seal:  # this rank's header goes on, RELAYED after a mismatch (the next rank records it)
                        sent = _tail(8, 1).clone()
                        sent[header.STATUS_AT] = header.RELAYED if mismatch else header.OK
                        good &= bool(torch.equal(end[x.numel():], sent))
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
        # rank 0 first: in one process a rank's first call compiles and loads its kernel, which waits for the
        # GPU to be idle, and a rank launched earlier spins there until its senders run (three calls ran past
        # the part's limit in reversed order, the likely cause)
        for r in range(P):
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


P_SIM, CULPRIT = 3, 2  # simulated ranks; the one whose slice is shorter in the mismatched step
BUSY_CYCLES = int(1e8)  # a sleep kernel of ~50 ms ahead of the mismatched step's exchanges


class _Rank:
    """What a Watch's error names of a group: its name and this simulated rank."""

    group_name = "simulated"

    def __init__(self, rank):
        self._rank = rank

    def rank(self):
        return self._rank

    def size(self):
        return P_SIM


def _sim_ring(watches, lengths, forward, gen):
    """One direction of the ring: checked_step per link, every rank recording in its Watch; {rank: late}."""
    d = "forward" if forward else "backward"
    x = torch.randn(P_SIM, B, H, D, E, device=DEV, generator=gen)
    order = list(range(P_SIM)) if forward else list(reversed(range(P_SIM)))
    msg, lates = torch.cat([x[order[0]].reshape(-1), _tail(lengths[order[0]], order[0], d)]), {}
    for prev, r in zip(order, order[1:]):
        lates[r], msg = checked_step(msg, _tail(lengths[r], r, d), x[r], None, None, seal=r != order[-1],
                                     checked=CHECKED, watch=watches[r].rows, src=prev)
    return lates


def _sim_gathered(watches, lengths, forward, gen):
    """The all-gather's combination on every rank that runs it, on the same gathered rows; {rank: late}."""
    d = "forward" if forward else "backward"
    x = torch.randn(P_SIM, B * H * D * E, device=DEV, generator=gen)
    a = -torch.rand(P_SIM, B * H, device=DEV, generator=gen)
    rows = torch.cat([x, a, torch.stack([_tail(lengths[j], j, d) for j in range(P_SIM)])], 1)
    return {r: combine_gathered(rows, (B, H, D, E), r, forward, True, None, _tail(lengths[r], r, d), CHECKED,
                                watches[r].rows)[0]
            for r in range(P_SIM) if (r > 0 if forward else r < P_SIM - 1)}


def _sim_peer(watches, lengths, forward, gen, bufs, streams):
    """The peer kernel, every simulated rank on its own stream (they wait on each other's flags); {rank: late}."""
    d = "forward" if forward else "backward"
    x = torch.randn(P_SIM, B, H, D, E, device=DEV, generator=gen)
    a = -torch.rand(P_SIM, B, H, device=DEV, generator=gen)
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    lates = {}
    # senders first (forward: rank 0 up; backward: the last rank down): a rank's first launch loads its
    # kernel, which waits for the GPU to idle, while a rank launched before its senders spins there
    for r in range(P_SIM) if forward else reversed(range(P_SIM)):
        with torch.cuda.stream(streams[r]):
            lates[r] = peer_kernel.exchange(x[r], a[r], None, r, P_SIM, forward, bufs[r],
                                            own_tail=_tail(lengths[r], r, d), checked=CHECKED,
                                            watch=watches[r].rows)[0]
    for s in streams:
        torch.cuda.current_stream().wait_stream(s)
    return {r: t for r, t in lates.items() if (r > 0 if forward else r < P_SIM - 1)}


def _sim_step(exchange, watches, lengths, gen, busy=False):
    """One training step on every simulated rank: the first forward's start (which raises what the
    record holds), a forward and a backward exchange, the backward's finish (the copy + event).
    Returns ({rank: error}, {rank: finite}, whether the copy was still queued when finish returned)."""
    errors = {}
    for r, w in enumerate(watches):
        try:
            w.start(True, _Rank(r))
        except Exception as e:  # noqa: BLE001 - what was raised is the result
            errors[r] = e
    if errors:
        return errors, {}, None
    if busy and DEV.type == "cuda":
        torch.cuda._sleep(BUSY_CYCLES)  # the GPU behind the host, as in training
    lates = [exchange(watches, lengths, forward, gen) for forward in (True, False)]
    for w in watches:
        w.finish(False)
    queued = None if watches[0].event is None else not watches[0].event.query()
    finite = {r: all(bool(torch.isfinite(d[r]).all()) for d in lates if r in d) for r in range(P_SIM)}
    return {}, finite, queued


def next_call(results):
    """Check 5 of the module docstring, for each exchange."""
    ok = True
    exchanges = {"ring": _sim_ring, "all-gather": _sim_gathered}
    if DEV.type == "cuda":
        bufs, streams = buffers(P_SIM, DEV), [torch.cuda.Stream() for _ in range(P_SIM)]
        exchanges["peer"] = lambda w, lengths, fwd, gen: _sim_peer(w, lengths, fwd, gen, bufs, streams)
    same, short = [8] * P_SIM, [6 if r == CULPRIT else 8 for r in range(P_SIM)]
    for T, r, d in ((T, r, d) for T in (6, 8) for r in range(P_SIM) for d in ("forward", "backward")):
        _tail(T, r, d)  # each header's first copy to the GPU waits for the stream: made before the busy step
    for name, exchange in exchanges.items():
        gen = torch.Generator(device=DEV).manual_seed(4)
        watches = [watch.Watch(P_SIM, DEV) for _ in range(P_SIM)]
        e1, finite1, _ = _sim_step(exchange, watches, same, gen)
        e2, finite2, queued = _sim_step(exchange, watches, short, gen, busy=True)
        t0 = time.perf_counter()
        e3, _, _ = _sim_step(exchange, watches, same, gen)
        waited_ms = (time.perf_counter() - t0) * 1e3
        e4, finite4, _ = _sim_step(exchange, watches, same, gen)
        named = {}
        for r, e in e3.items():
            text = str(e)
            own = f"rank {r}: q [{B}, {short[r]}, {H}, {D}]"
            other = f"q [{B}, 6, {H}, {D}]" in text if r != CULPRIT else f"q [{B}, 8, {H}, {D}]" in text
            named[r] = type(e).__name__ == "RankMismatchError" and own in text and (
                other or "passed on a state from a rank whose inputs differ" in text)
        good = (not e1 and all(finite1.values()) and not e2 and not all(finite2.values())
                and len(e3) == P_SIM and all(named.values()) and not e4 and all(finite4.values())
                and queued is not False)
        ok &= good
        results.append(dict(check="next call raises", exchange=name, first_step_finite=finite1,
                            mismatched_step_finite=finite2, mismatched_step_errors=len(e2),
                            copy_queued_behind_busy_gpu=queued, next_forward_waited_ms=round(waited_ms, 2),
                            errors={r: f"{type(e).__name__}: {e}" for r, e in e3.items()}, names_ok=named,
                            step_after_is_quiet=not e4 and all(finite4.values()), ok=good))
        print(f"  {name}: mismatched step NaN on ranks {[r for r, f in finite2.items() if not f]}, next forward "
              f"raised on {sorted(e3)} (waited {waited_ms:.1f} ms for the record; copy queued: {queued})", flush=True)
    return ok


def _host_us(fn, before=None, reps=20):
    """Median host us of fn(), each started on an idle GPU after `before`."""
    times = []
    for _ in range(reps + 3):
        if before is not None:
            before()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times[3:])


def cost(results, ts=(8192, 32768), budget_s=110.0):
    """Check 6 of the module docstring: medians of 20 (us), a call with and without the flag path
    (a length is skipped once the script has run `budget_s`, to end within its 150 s)."""
    g = _Rank(1)
    record = watch.Watch(P_SIM, DEV)
    gen = torch.Generator(device=DEV).manual_seed(5)
    x, own = (torch.randn(B, H, D, E, device=DEV, generator=gen) for _ in range(2))
    a = -torch.rand(B, H, device=DEV, generator=gen)
    mine, msg = _tail(8, 1), torch.cat([x.reshape(-1), _tail(8, 0)])
    rows = torch.cat([torch.randn(P_SIM, x.numel() + B * H, device=DEV, generator=gen),
                      torch.stack([_tail(8, j) for j in range(P_SIM)])], 1)

    def link(flag):
        return checked_step(msg, mine, own, a, None, seal=True, checked=CHECKED, watch=record.rows if flag else None,
                            src=0)

    def combine(flag):
        return combine_gathered(rows, (B, H, D, E), 1, True, True, None, mine, CHECKED, record.rows if flag else None)

    def per_launch(fn, n=50):
        return median_ms(lambda: [fn() for _ in range(n)], DEV, 3, 20) * 1e3 / n

    parts = dict(
        ring_link_us=per_launch(lambda: link(False)), ring_link_flag_us=per_launch(lambda: link(True)),
        combine_us=per_launch(lambda: combine(False)), combine_flag_us=per_launch(lambda: combine(True)),
        finish_host_us=host_ms(lambda: record.finish(False), DEV, 20) * 1e3,  # while the GPU is busy
        finish_device_us=per_launch(lambda: record.finish(False)),  # the copy and the event on the stream
        start_host_us=_host_us(lambda: record.start(True, g), before=lambda: record.finish(False)),
    )
    results.append(dict(check="flag path parts", **{k: round(v, 2) for k, v in parts.items()}, ok=True))
    print("  parts (us, median of 20): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()), flush=True)
    for T in ts:
        if time.monotonic() - T0 > budget_s:
            results.append(dict(check="flag path call", T=T, skipped=f"over the {budget_s:g} s budget", ok=True))
            continue
        xin = inputs(T, H, D, "gate", torch.bfloat16, DEV)
        q, k, v = (xin[n].detach().requires_grad_() for n in "qkv")

        def call(flag):  # one layer's step: op fwd, forward link, op bwd, backward link (+ the watch)
            if flag:
                record.start(True, g)
            o = lasp_fx.linear_attention(q, k, v, xin["g"])
            link(flag)
            o.backward(xin["do"])
            link(flag)
            if flag:
                record.finish(False)

        without = median_ms(lambda: call(False), DEV, 3, 20) * 1e3
        with_flag = median_ms(lambda: call(True), DEV, 3, 20) * 1e3
        # the flag path's own device work per call: two links' difference and the record's copy
        added = 2 * (parts["ring_link_flag_us"] - parts["ring_link_us"]) + parts["finish_device_us"]
        row = dict(check="flag path call", T=T, call_us=round(without, 1), call_flag_us=round(with_flag, 1),
                   measured_percent=round(100 * (with_flag - without) / without, 3),
                   parts_percent=round(100 * added / without, 3), ok=True)
        results.append(row)
        print(f"  T={T}: call {without:.1f} us without the flag path, {with_flag:.1f} us with it "
              f"({row['measured_percent']:+.3f} %; its parts: {row['parts_percent']:.3f} %)", flush=True)
    return True


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run under TRITON_INTERPRET=1 (no peer check)")
    args = p.parse_args()
    global DEV
    DEV = torch.device(args.device)
    results, ok = [], True
    # the peer-kernel check last: its simulated ranks spin on each other, the one check that can hang
    checks = (ring_link, gathered, resets, next_call, cost, peer) if DEV.type == "cuda" else (
        ring_link, gathered, resets, next_call)
    for check in checks:
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
