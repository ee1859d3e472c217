"""The cost model behind method="auto": time until the last rank holds its incoming state, ring vs all-gather.

Both exchanges start when every rank has its local state (the hook in `fwd` / `bwd`), at about
the same moment on every rank, and both move only fp32 states of n = B*H*D*E*4 bytes:

    ring       host_ring + (P - 1) hops in a chain:  (P - 1) * (alpha_p2p + n / beta_p2p)
    all-gather host_ag + one collective:             alpha_ag + (P - 1) * n / beta_ag

`host_*` is what one call costs before its first byte moves and after its last (Python, the
NCCL calls, the combine kernels: the all-gather path launches ~8 small ops, the ring 2); it is
paid once, in parallel on every rank, while the hops add up along the chain. The smaller total
wins. With these constants the ring wins up to P = 4 and the all-gather from P = 5.

Calibration: the forward exchange alone (1 MiB state, barrier then one call, max over ranks;
`bench/sp.py` "exchange alone", on the compute stream as shipped), on 4 x H200 (NV18):
    P = 2: ring 0.098 ms, all-gather 0.275 ms  (bench/records/2026-11-28_fold, call 2)
    P = 4: ring 0.279 ms, all-gather 0.571 ms  (bench/records/2026-11-28_fixed_decay, call 8)
The ring fits 8 us + (P - 1) x 90.5 us at both points, i.e. NCCL's one-way 1 MiB p2p (~80 us on
4 x H100 in shared/anchors) plus 10 us of bytes. The all-gather is set from P = 2 (265 us + one
collective) with NCCL's own growth over ranks (shared/anchors: 0.19 ms over 2, 0.20 over 4);
at P = 4 it measured 0.57 ms, twice the model's 0.30 ms, unexplained so far (rank skew after
the barrier is one candidate). Whole op at P = 4 (32K/GPU, fwd+bwd): ring 3.20 vs all-gather
3.93 ms in one run, 3.14 vs 3.06 in another: a near tie, as the model's 280 vs 296 us says.
Prediction for P = 8 (`bench/cost_check.py`): ring 0.64 ms, all-gather 0.34 ms -> all-gather;
taking the P = 4 all-gather point at face value instead would predict the ring. An 8-GPU run
decides (issue 8).

Not modelled yet: the all-gather's collectives now run alongside the output kernel (forward,
which then adds the late state in one more pass over q and o, tens of us at 32K tokens) and the dq
kernel (backward), while the ring's chain stays exposed in both directions (less one hop in the
backward). That favours the all-gather beyond what these exchange-alone numbers say; whole-op
timings at P = 2, 3 and 4 after this change (not yet run) should set the crossover.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("ring", "allgather")


@dataclass(frozen=True)
class Link:
    """Per-call host time (us), per-hop latency (us) and bandwidths (bytes/us) of one machine kind."""

    host_ring_us: float
    alpha_p2p_us: float
    beta_p2p: float
    host_ag_us: float
    alpha_ag_us: float
    beta_ag: float


LINKS = {
    "cuda": Link(host_ring_us=8.0, alpha_p2p_us=80.0, beta_p2p=100e3,
                 host_ag_us=85.0, alpha_ag_us=180.0, beta_ag=100e3),
    # gloo over loopback on a 2-core box: rough (only correctness matters there)
    "cpu": Link(host_ring_us=300.0, alpha_p2p_us=150.0, beta_p2p=2e3,
                host_ag_us=900.0, alpha_ag_us=300.0, beta_ag=2e3),
}


@dataclass(frozen=True)
class Choice:
    method: str
    ring_us: float
    allgather_us: float
    reason: str


def _times(world_size: int, state_bytes: int, device_type: str) -> tuple[Link, float, float, float]:
    link = LINKS.get(device_type, LINKS["cuda"])
    hop = link.alpha_p2p_us + state_bytes / link.beta_p2p
    ring = link.host_ring_us + (world_size - 1) * hop
    ag = link.host_ag_us + link.alpha_ag_us + (world_size - 1) * state_bytes / link.beta_ag
    return link, hop, ring, ag


def estimate(world_size: int, state_bytes: int, device_type: str) -> Choice:
    """Predicted exchange times of both methods and the faster one, with the reason in words."""
    link, hop, ring, ag = _times(world_size, state_bytes, device_type)
    method = "ring" if ring <= ag else "allgather"
    reason = (
        f"P={world_size}, state {state_bytes / 2**20:.2f} MiB on {device_type}: ring = {link.host_ring_us:.0f} us "
        f"+ {world_size - 1} hops x {hop:.0f} us = {ring:.0f} us, all-gather = {link.host_ag_us:.0f} us + one "
        f"collective {ag - link.host_ag_us:.0f} us = {ag:.0f} us -> {method}"
    )
    return Choice(method, ring, ag, reason)


def resolve_method(method: str, world_size: int, state_bytes: int, device_type: str) -> str:
    """`method` itself when it is "ring" or "allgather"; the cost model's pick for "auto" (every call: no words built)."""
    if method == "auto":
        _, _, ring, ag = _times(world_size, state_bytes, device_type)
        return "ring" if ring <= ag else "allgather"
    if method not in METHODS:
        raise ValueError(f"method must be 'ring', 'allgather' or 'auto', got {method!r}")
    return method
