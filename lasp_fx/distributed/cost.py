"""The cost model behind method="auto": device time the exchange adds to one fwd+bwd, ring vs all-gather.

ring = (2P - 3) hops of alpha_p2p + n / beta_p2p; all-gather = 2 * (alpha_ag + (P - 1) * n /
beta_ag), with n the state's bytes and (alpha, beta) per transport fitted to bench/records
(bench/cost_check.py); the smaller total wins (docs/design.md §4).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """Per-exchange latency (us) and bandwidth (bytes/us) of point-to-point and all-gather on one machine kind."""

    alpha_p2p_us: float
    beta_p2p: float
    alpha_ag_us: float
    beta_ag: float


LINKS = {
    "cuda": Link(alpha_p2p_us=70.0, beta_p2p=100e3, alpha_ag_us=60.0, beta_ag=90e3),
    # the all-gather through peer memory (distributed/peer.py); point-to-point stays NCCL's
    "cuda-peer": Link(alpha_p2p_us=70.0, beta_p2p=100e3, alpha_ag_us=8.0, beta_ag=150e3),
    # gloo over loopback on a 2-core box: rough (only correctness matters there)
    "cpu": Link(alpha_p2p_us=150.0, beta_p2p=2e3, alpha_ag_us=300.0, beta_ag=2e3),
}


@dataclass(frozen=True)
class Choice:
    method: str
    ring_us: float
    allgather_us: float
    reason: str


def _times(world_size: int, state_bytes: int, device_type: str, peer: bool) -> tuple[float, float, float]:
    link = LINKS["cuda-peer"] if peer and device_type == "cuda" else LINKS.get(device_type, LINKS["cuda"])
    hop = link.alpha_p2p_us + state_bytes / link.beta_p2p
    ring = (2 * world_size - 3) * hop
    ag = 2 * (link.alpha_ag_us + (world_size - 1) * state_bytes / link.beta_ag)
    return hop, ring, ag


def estimate(world_size: int, state_bytes: int, device_type: str, peer: bool = False) -> Choice:
    """Predicted exchange times of both methods per fwd+bwd and the faster one, with the reason in words.

    `peer`: the group's all-gather goes through peer memory (distributed/peer.usable).
    """
    hop, ring, ag = _times(world_size, state_bytes, device_type, peer)
    method = "ring" if ring <= ag else "allgather"
    how = "through peer memory" if peer and device_type == "cuda" else "collectives"
    reason = (
        f"P={world_size}, state {state_bytes / 2**20:.2f} MiB on {device_type}, per fwd+bwd: ring = "
        f"{2 * world_size - 3} hops x {hop:.0f} us = {ring:.0f} us, all-gather = 2 {how} = {ag:.0f} us "
        f"-> {method}"
    )
    return Choice(method, ring, ag, reason)


def resolve_method(method: str, world_size: int, state_bytes: int, device_type: str, peer: bool = False) -> str:
    """`method` itself when it is "ring" or "allgather"; the cost model's pick for "auto" (every call: no words)."""
    if method == "auto":
        _, ring, ag = _times(world_size, state_bytes, device_type, peer)
        return "ring" if ring <= ag else "allgather"
    return method
