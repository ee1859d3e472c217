"""The cost model behind method="auto": device time the exchange adds to one fwd+bwd, ring vs all-gather.

Both exchanges run exposed on the compute stream's order (combine.py) and move only fp32
states of n = B*H*D*E*4 bytes:

    ring       (2P - 3) hops in a chain: P - 1 in the forward, P - 2 in the backward (the last
               rank's send leaves at once and arrives during the next rank's dq)
               hop = alpha_p2p + n / beta_p2p
    all-gather 2 exchanges, one per direction: 2 * (alpha + (P - 1) * n / beta), where the
               transport is peer memory when the group can use it (distributed/peer.py: one
               kernel, no collective) and NCCL's all-gather otherwise

The smaller total wins. With peer memory the all-gather wins at every P; over NCCL the ring
wins at P = 2 and the all-gather from P = 3.

Calibration: fwd+bwd replayed as a CUDA graph (device time alone, no host work in the way) at
32K tokens per GPU, 1 MiB states, H200s, TORCH_NCCL_HIGH_PRIORITY=1, over the single-GPU op's
1.52 ms (bench/sp.py "graph" column, each replay started after a barrier):
    P = 2: ring +75 us (1 hop), NCCL all-gather +143 us, peer all-gather +27 us
           (bench/records/2026-11-28_overlap call 5; 2026-11-28_peer call 6)
    P = 4: ring +699 us (5 hops), NCCL all-gather +177 us (2026-11-28_overlap call 5)
The NCCL all-gather fits alpha = 60 us with ~11 us per MiB gathered. The peer kernel took
~10 us per exchange alone at P = 2 (bench/exchange.py); alpha = 8 us and 150 GB/s fit the
+27 us. The ring's hop is 75 us at P = 2 but 140 us at P = 4: its links wait for the slowest
rank before them as well as for the bytes, so the model (80 us a hop) is optimistic for the
ring at P >= 3, which loses there anyway. Prediction for P = 8 (`bench/cost_model.py`):
all-gather on either transport.
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
