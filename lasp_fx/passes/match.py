"""What the detector found: candidates (internal), matches and near-misses (reported)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.fx import Node


@dataclass(frozen=True)
class Layout:
    """Where a tensor keeps its canonical dims (batch dims beta..., sequence, feature).

    `batch[i]` is the dim holding beta_i (None: absent, broadcast); `seq` / `feat` likewise.
    Dims of the tensor that are named nowhere must have size 1.
    """

    batch: tuple[int | None, ...]
    seq: int | None
    feat: int | None

    def describe(self, ndim: int, heads_dim: bool = True) -> str:
        names = ["1"] * ndim
        for i, d in enumerate(self.batch):
            if d is not None:
                names[d] = "B" if i == 0 else ("H" if len(self.batch) == 2 else f"H{i}")
        if self.seq is not None:
            names[self.seq] = "T"
        if self.feat is not None:
            names[self.feat] = "D"
        return "[" + ",".join(names) + "]"


@dataclass
class Decay:
    """How the log-decay handed to the op is computed.

    kind "none"; "const": one value per head; "gate": one per token (data-dependent).
    With `node`, log_decay = alpha * psi(node) with psi "id" or "log", computed in the graph
    (so gradients reach learnable decays); without, `value` holds a fixed [H] log-decay.
    """

    kind: str = "none"
    node: Node | None = None
    layout: Layout | None = None
    psi: str = "id"
    alpha: float = 1.0
    value: torch.Tensor | None = None
    learnable: bool = False


@dataclass
class Candidate:
    """A region of the graph believed to compute causal linear attention, with everything
    needed to build the replacement. Only verified candidates become matches."""

    family: str
    anchor: Node
    q: Node
    k: Node
    v: Node
    out: Node
    q_layout: Layout
    k_layout: Layout
    v_layout: Layout
    out_layout: Layout
    beta: tuple[int, ...]  # sizes of the canonical batch dims; B = beta[0], H = prod(beta[1:])
    seq_len: int
    scale: float = 1.0
    decay: Decay = field(default_factory=Decay)
    normalised: bool = False
    norm_a: float = 1.0  # out = norm_a * num / steps(den + norm_b)
    norm_b: float = 0.0
    den_steps: tuple = ()  # what the model does to its normaliser: ("detach",), ("abs",), ("clamp", lo, hi)
    row_power: float = 0.0  # num and den times (sum_{j <= i} decay^(i-j)) ** -row_power at global position i
    error: float = 0.0  # the probe's worst relative error
    tol: float = 1e-6  # the probe's bound: larger when the decay comes from low-precision buffers
    notes: list[str] = field(default_factory=list)


@dataclass
class LinearAttentionMatch:
    """One causal linear-attention computation found in the graph and proven equal to the op."""

    family: str
    source: str  # "file.py:LINE"
    code: str  # that line
    module: str  # FQN of the module it lives in
    q: str
    k: str
    v: str
    out: str
    layouts: dict[str, str]
    heads: int
    kv_heads: int
    head_dim: int
    value_dim: int
    seq_len: int
    scale: float
    decay: str  # "none" | "const" | "gate"
    decay_learnable: bool
    decay_from: str | None
    normalised: bool
    norm_eps: float
    initial_state: str | None
    max_error: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"scale={self.scale:.4g}"]
        if self.decay != "none":
            parts.append(f"decay={self.decay}" + (" (learnable)" if self.decay_learnable else ""))
        if self.kv_heads != self.heads:
            parts.append(f"GQA {self.heads}/{self.kv_heads}")
        if self.normalised:
            parts.append(f"normalised eps={self.norm_eps:.3g}")
        return ", ".join(parts)


@dataclass
class NearMiss:
    """Something that looks like attention but was not rewritten, and why."""

    family: str
    source: str
    code: str
    module: str
    reason: str
    node: Node | None = field(default=None, repr=False, compare=False)
