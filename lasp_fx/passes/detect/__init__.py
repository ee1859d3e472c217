"""Detection: run every pattern family over a captured graph, keep what the probes proved.

canonicalise -> anchor -> probe (docs/design.md §6): each family in patterns/ anchors on its own
skeleton and hands verified candidates back; a region claimed by a wider family (a block loop
around its per-chunk products) wins over the candidates inside it.
"""

from __future__ import annotations

from torch.fx import GraphModule

from lasp_fx.passes.detect import causality
from lasp_fx.passes.detect.context import Context
from lasp_fx.passes.detect.einsums import split_einsums
from lasp_fx.passes.match import Candidate, NearMiss
from lasp_fx.passes.detect.patterns import blocks, cumsum, feature_scores, quadratic
from lasp_fx.passes.detect.probe import region
from lasp_fx.passes.detect.values import check_replay_size

FAMILIES = [quadratic, cumsum, blocks, feature_scores]  # feature_scores: near-misses only


def detect(gm: GraphModule, example_inputs: list) -> tuple[list[Candidate], list[NearMiss]]:
    """Verified candidates (in graph order) and near-misses of a captured graph.

    Args:
        gm: a functional pre-dispatch ATen graph from `lasp_fx.capture`.
        example_inputs: the flat inputs of its placeholders (the probes run the graph once).
    """
    split_einsums(gm)  # semantics unchanged; the families read two-operand products
    check_replay_size(gm)  # before any probe: their failures become near-misses, this one must not
    ctx = Context(gm, example_inputs)
    found = [f for fam in FAMILIES for f in fam.find(ctx)]
    cands = [f for f in found if isinstance(f, Candidate)]
    near = [f for f in found if isinstance(f, NearMiss)]
    near = causality.near_misses(ctx) + near  # a non-causal model: said first, whatever else is found
    cands = _drop_nested(cands)
    claimed = set().union(*(set(region(c)) for c in cands)) if cands else set()
    return cands, [n for n in near if n.node not in claimed]  # parts of a match are not near-misses


def _drop_nested(cands: list[Candidate]) -> list[Candidate]:
    """Keep candidates whose region is not inside another candidate's region."""
    regions = [set(region(c)) | {c.out} for c in cands]
    keep = []
    for i, c in enumerate(cands):
        inside = any(j != i and regions[i] < regions[j] for j in range(len(cands)))
        if not inside:
            keep.append(c)
    return keep
