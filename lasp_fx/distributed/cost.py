"""The cost model behind method="auto": time until the last rank holds its incoming state, ring vs all-gather.

Both exchanges start when every rank has its local state (the hook in `fwd` / `bwd`), at about
the same moment on every rank, and both move only fp32 states of n = B*H*D*E*4 bytes:

    ring       (P - 1) hops in a chain:  t = (P - 1) * (alpha_p2p + n / beta_p2p)
    all-gather one collective:           t = alpha_ag + (P - 1) * n / beta_ag

(the combine after the exchange is one d x e axpy per hop, or one weighted sum, and is left out:
~1 us per MiB of state on an H100). The smaller t wins; both are hidden behind the output
kernel when t is shorter than it. The constants are plain numbers (no state): latencies
include the launch overheads, as measured by bench/sp.py.
"""

from __future__ import annotations

from dataclasses import dataclass

METHODS = ("ring", "allgather")


@dataclass(frozen=True)
class Link:
    """Latency (us) and bandwidth (bytes/us) of one p2p hop and of an all-gather."""

    alpha_p2p_us: float
    beta_p2p: float
    alpha_ag_us: float
    beta_ag: float


# cuda: 4 x H100 SXM over NVLink (bench/records/2026-11-28_sp/), one-way hop of a 1 MiB state
# and all-gather over 4 ranks, both timed with CUDA events around back-to-back calls.
# cpu: gloo over loopback on a 2-core box (rough: only correctness matters there).
LINKS = {
    "cuda": Link(alpha_p2p_us=25.0, beta_p2p=100e3, alpha_ag_us=45.0, beta_ag=100e3),
    "cpu": Link(alpha_p2p_us=150.0, beta_p2p=2e3, alpha_ag_us=300.0, beta_ag=2e3),
}


@dataclass(frozen=True)
class Choice:
    method: str
    ring_us: float
    allgather_us: float
    reason: str


def estimate(world_size: int, state_bytes: int, device_type: str) -> Choice:
    """Predicted exchange times of both methods and the faster one, with the reason in words."""
    link = LINKS.get(device_type, LINKS["cuda"])
    hops = world_size - 1
    ring = hops * (link.alpha_p2p_us + state_bytes / link.beta_p2p)
    ag = link.alpha_ag_us + hops * state_bytes / link.beta_ag
    method = "ring" if ring <= ag else "allgather"
    reason = (
        f"P={world_size}, state {state_bytes / 2**20:.2f} MiB on {device_type}: ring = {hops} hops x "
        f"({link.alpha_p2p_us:.0f} us + transfer) = {ring:.0f} us, all-gather = {link.alpha_ag_us:.0f} us "
        f"+ {hops} x transfer = {ag:.0f} us -> {method}"
    )
    return Choice(method, ring, ag, reason)


def resolve_method(method: str, world_size: int, state_bytes: int, device_type: str) -> str:
    """`method` itself when it is "ring" or "allgather"; the cost model's pick for "auto"."""
    if method == "auto":
        return estimate(world_size, state_bytes, device_type).method
    if method not in METHODS:
        raise ValueError(f"method must be 'ring', 'allgather' or 'auto', got {method!r}")
    return method
