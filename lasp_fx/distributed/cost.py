"""The cost model behind method="auto": device time the exchange adds to one fwd+bwd, ring vs all-gather.

Both exchanges run exposed on the compute stream's order (combine.py) and move only fp32
states of n = B*H*D*E*4 bytes:

    ring       (2P - 3) hops in a chain: P - 1 in the forward, P - 2 in the backward (the last
               rank's send leaves at once and arrives during the next rank's dq)
               hop = alpha_p2p + n / beta_p2p
    all-gather 2 collectives, one per direction: 2 * (alpha_ag + (P - 1) * n / beta_ag)

The smaller total wins: with the constants below the ring at P = 2, the all-gather from P = 3.

Calibration: fwd+bwd replayed as a CUDA graph (device time alone, no host work in the way) at
32K tokens per GPU, 1 MiB states, 4 x H200 (NV18), TORCH_NCCL_HIGH_PRIORITY=1, over the
single-GPU op's 1.52 ms (bench/sp.py "graph" column; bench/records/2026-11-28_overlap, call 5):
    P = 2: ring +75 us (1 hop),   all-gather +143 us (2 collectives)
    P = 4: ring +699 us (5 hops), all-gather +177 us
The all-gather fits alpha_ag = 60 us with ~11 us per MiB gathered at both points. The ring's
hop is 75 us at P = 2 but 140 us at P = 4: its links wait for the slowest rank before them as
well as for the bytes, so the model (80 us a hop) is optimistic for the ring at P >= 3, which
loses there anyway. Default NCCL priority gave the same all-gather time (+183 us at P = 4) and
a slower ring (+1430 us). Prediction for P = 8 (`bench/cost_check.py`): all-gather.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("ring", "allgather")


@dataclass(frozen=True)
class Link:
    """Per-exchange latency (us) and bandwidth (bytes/us) of point-to-point and all-gather on one machine kind."""

    alpha_p2p_us: float
    beta_p2p: float
    alpha_ag_us: float
    beta_ag: float


LINKS = {
    "cuda": Link(alpha_p2p_us=70.0, beta_p2p=100e3, alpha_ag_us=60.0, beta_ag=90e3),
    # gloo over loopback on a 2-core box: rough (only correctness matters there)
    "cpu": Link(alpha_p2p_us=150.0, beta_p2p=2e3, alpha_ag_us=300.0, beta_ag=2e3),
}


@dataclass(frozen=True)
class Choice:
    method: str
    ring_us: float
    allgather_us: float
    reason: str


def _times(world_size: int, state_bytes: int, device_type: str) -> tuple[float, float, float]:
    link = LINKS.get(device_type, LINKS["cuda"])
    hop = link.alpha_p2p_us + state_bytes / link.beta_p2p
    ring = (2 * world_size - 3) * hop
    ag = 2 * (link.alpha_ag_us + (world_size - 1) * state_bytes / link.beta_ag)
    return hop, ring, ag


def estimate(world_size: int, state_bytes: int, device_type: str) -> Choice:
    """Predicted exchange times of both methods per fwd+bwd and the faster one, with the reason in words."""
    hop, ring, ag = _times(world_size, state_bytes, device_type)
    method = "ring" if ring <= ag else "allgather"
    reason = (
        f"P={world_size}, state {state_bytes / 2**20:.2f} MiB on {device_type}, per fwd+bwd: ring = "
        f"{2 * world_size - 3} hops x {hop:.0f} us = {ring:.0f} us, all-gather = 2 collectives = {ag:.0f} us "
        f"-> {method}"
    )
    return Choice(method, ring, ag, reason)


def resolve_method(method: str, world_size: int, state_bytes: int, device_type: str) -> str:
    """`method` itself when it is "ring" or "allgather"; the cost model's pick for "auto" (every call: no words built)."""
    if method == "auto":
        _, ring, ag = _times(world_size, state_bytes, device_type)
        return "ring" if ring <= ag else "allgather"
    if method not in METHODS:
        raise ValueError(f"method must be 'ring', 'allgather' or 'auto', got {method!r}")
    return method
