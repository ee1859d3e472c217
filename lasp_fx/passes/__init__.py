"""The FX passes on a captured graph: `find` linear attention (detect/), `rewrite` it into the op, `shard`.

    cands, report = find(gm, example_inputs)     # what is found, where, and why not
    gm = rewrite(gm, cands)                      # each verified candidate -> one op node
"""

from __future__ import annotations

from torch.fx import GraphModule

from lasp_fx.passes.detect import detect
from lasp_fx.passes.detect.context import to_match
from lasp_fx.passes.detect.known_kernels import direct_calls
from lasp_fx.passes.detect.report import InspectReport
from lasp_fx.passes.detect.softmax_layers import softmax_layers
from lasp_fx.passes.match import Candidate, LinearAttentionMatch, NearMiss
from lasp_fx.passes.rewrite import MATCH_KEY, rewrite

__all__ = ["find", "convert_captured", "detect", "rewrite", "rewrite_linear_attention", "InspectReport",
           "LinearAttentionMatch", "NearMiss", "MATCH_KEY"]


def find(gm: GraphModule, example_inputs) -> tuple[list[Candidate], InspectReport]:
    """The verified candidates of `gm` and the report of what was found: direct kernel calls, then matches,
    the near-misses and the softmax attention layers left as they are."""
    cands, near = detect(gm, example_inputs)
    return cands, InspectReport(direct_calls(gm) + [to_match(c) for c in cands], near, softmax_layers(gm))


def convert_captured(captured) -> tuple[GraphModule, InspectReport]:
    """Detect and rewrite a `lasp_fx.capture.Captured` graph in place; returns it and the report."""
    cands, report = find(captured.gm, captured.example_inputs)
    return rewrite(captured.gm, cands), report


def rewrite_linear_attention(gm: GraphModule, example_inputs: list | None = None) -> GraphModule:
    """The `gm -> gm` pass for the torch.compile backend: detect and rewrite in place.

    Args:
        gm: dynamo's graph re-traced to pre-dispatch ATen (`lasp_fx.capture.capture_dynamo_graph`
            or an equivalent make_fx re-trace); symbolic sequence lengths are kept symbolic.
        example_inputs: the backend's real example inputs (parameters included). The probes need
            real parameter and buffer values; without them the graph is returned unchanged, with
            a warning.
    """
    if example_inputs is None:
        import warnings

        warnings.warn("rewrite_linear_attention needs the backend's example_inputs; graph left unchanged",
                      stacklevel=2)
        return gm
    cands, report = find(gm, example_inputs)
    gm = rewrite(gm, cands)
    gm.meta["lasp_fx_report"] = report
    return gm
