"""Near-misses for scores written as a product summed over the features: `(q[.., :, None] * k[.., None] * m).sum(-1)`.

The quadratic family anchors on q @ k^T (a matmul or an einsum). Research code also writes the
scores as a broadcast product summed over the feature dim (Kimi delta attention, per-channel gated
forms), often with a decay inside the sum that varies along the features. Such scores, followed by
a product with v that sums over the keys, are attention lasp_fx does not match: said, with why.
"""

from __future__ import annotations

from torch.fx import Node

from lasp_fx.passes.detect.context import Context
from lasp_fx.passes.detect.patterns.quadratic import second_product
from lasp_fx.passes.graph import aten, shape
from lasp_fx.passes.match import NearMiss

FAMILY = "quadratic"
_PER_FEATURE = ("scores written as q . k summed over the features with a factor inside the sum that varies along "
                "the features (a decay per feature channel); lasp_fx matches q @ k^T times one mask for every feature")
_PLAIN = ("scores written as a product summed over the features, not as q @ k^T: write them as a matmul or an "
          "einsum for lasp_fx to match them")


def find(ctx: Context) -> list[NearMiss]:
    found = []
    for node in ctx.gm.graph.nodes:
        for col, per_feature in _feature_scores(node):
            if _summed_over_keys(node, col):
                found.append(ctx.near_miss(FAMILY, node, _PER_FEATURE if per_feature else _PLAIN))
                break
    return found


def _feature_scores(node: Node) -> list[tuple[int, bool]]:
    """(a key dim of the scores, whether a factor varies along the features) for each reading of
    `node` as a broadcast product of a query-like and a key-like factor summed over one feature dim."""
    if node.op != "call_function" or node.target is not aten.sum.dim_IntList or not isinstance(node.args[0], Node):
        return []
    x, dims = node.args[0], node.args[1]
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    out = shape(x)
    if out is None or dims is None or len(dims) != 1 or keepdim:
        return []
    d = dims[0] % len(out)
    factors = [_aligned(f, len(out)) for f in _factors(x)]
    if len(factors) < 2 or any(f is None for f in factors):
        return []
    readings = []
    for r in range(len(out)):
        for c in range(len(out)):
            if len({r, c, d}) < 3 or out[r] != out[c] or out[r] < 2:
                continue
            rows = [f for f in factors if f[r] > 1 and f[c] == 1 and f[d] > 1]
            cols = [f for f in factors if f[r] == 1 and f[c] > 1 and f[d] > 1]
            if rows and cols:
                per_feature = any(f[d] > 1 and f[r] > 1 and f[c] > 1 for f in factors)
                readings.append((c - (c > d), per_feature))
    return readings


def _factors(x: Node) -> list[Node]:
    """The tensor leaves of a tree of products."""
    if x.op == "call_function" and x.target is aten.mul.Tensor:
        return [f for a in x.args[:2] if isinstance(a, Node) for f in _factors(a)]
    return [x]


def _aligned(node: Node, ndim: int) -> tuple[int, ...] | None:
    sh = shape(node)
    return None if sh is None or len(sh) > ndim else (1,) * (ndim - len(sh)) + tuple(sh)


def _summed_over_keys(S: Node, col: int) -> bool:
    """A product downstream of the scores sums over their key dim (they weight values)."""
    second = second_product(S)
    if second is None:
        return False
    _, c2, operand, _ = second
    lab = c2.inputs[c2.operands.index(operand)]
    return shape(operand) == shape(S) and lab[col] in c2.contracted()
