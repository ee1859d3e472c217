"""The cost model behind method="auto": time until the last rank holds its incoming state, ring vs all-gather.

Both exchanges start when every rank has its local state (the hook in `fwd` / `bwd`), at about
the same moment on every rank, and both move only fp32 states of n = B*H*D*E*4 bytes:

    ring       host_ring + (P - 1) hops in a chain:  (P - 1) * (alpha_p2p + n / beta_p2p)
    all-gather host_ag + one collective:             alpha_ag + (P - 1) * n / beta_ag

`host_*` is what one call costs before its first byte moves and after its last (Python, stream
and event handling, the combine kernels: the all-gather path launches ~10 small ops, the ring 2);
it is paid once, in parallel on every rank, while the hops add up along the chain. The smaller
total wins. With today's constants the ring wins up to P = 7 on NVLink GPUs.

Calibration (bench/records/2026-11-28_sp/NOTES.md): 2 x H200 (NV18), 1 MiB state, each exchange
alone: ring 0.50 / 0.40 ms (fwd / bwd), all-gather 0.86 / 0.85 ms; NCCL alone on 4 x H100
(shared/anchors): one-way 1 MiB p2p ~0.08 ms, all-gather of 1 MiB ~0.19 ms over 2 and 0.20 over 4.
So alpha_p2p + n/beta_p2p = 80 us, alpha_ag ~ 180 us, and the rest of each measurement is host
time (370 us ring, 665 us all-gather). Not yet measured on more than 2 GPUs (no 4-GPU machine was
lent): the per-hop term is NCCL's, not ours. Checked on 4 x H200 since (bench/records/2026-11-28_fold,
exchange on the compute stream): the ring was faster than the all-gather at P = 2 and P = 4 for
the whole op (3.91 vs 4.00 ms and 4.58 vs 5.08 ms fwd+bwd at 32K/GPU), as this model predicts.
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
    "cuda": Link(host_ring_us=370.0, alpha_p2p_us=70.0, beta_p2p=100e3,
                 host_ag_us=665.0, alpha_ag_us=180.0, beta_ag=100e3),
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
