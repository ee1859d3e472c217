"""The FX pass: capture a model, detect its linear attention, rewrite it into the lasp_fx op.

    report = lasp_fx.inspect(model, x)                  # what is found, where, and why not
    gm = lasp_fx.passes.rewrite_model(model, x)        # the rewritten module (shares parameters)

Stages, each importable and testable alone: `lasp_fx.capture.capture` -> `detect` -> `rewrite`.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from lasp_fx.capture import Captured, capture
from lasp_fx.passes.detect.context import to_match
from lasp_fx.passes.detect import detect
from lasp_fx.passes.detect.patterns.kernels import direct_calls
from lasp_fx.passes.match import LinearAttentionMatch, NearMiss
from lasp_fx.passes.detect.report import InspectReport, inspect
from lasp_fx.passes.rewrite import MATCH_KEY, rewrite
from lasp_fx.passes.detect.softmax_layers import softmax_layers

__all__ = ["convert", "convert_captured", "inspect_captured", "report_of", "detect", "rewrite", "rewrite_model",
           "rewrite_linear_attention", "inspect", "InspectReport", "LinearAttentionMatch", "NearMiss", "MATCH_KEY"]


def report_of(gm: GraphModule, cands: list, near: list[NearMiss]) -> InspectReport:
    """The report of a graph before its rewrite: the op calls already in it, the verified candidates,
    the near-misses and the softmax attention layers."""
    return InspectReport(direct_calls(gm) + [to_match(c) for c in cands], near, softmax_layers(gm))


def inspect_captured(captured: Captured) -> tuple[InspectReport, list]:
    """Detect in a captured graph without changing it: the report and the verified candidates."""
    cands, near = detect(captured.gm, captured.example_inputs)
    return report_of(captured.gm, cands, near), cands


def convert_captured(captured: Captured) -> tuple[GraphModule, InspectReport]:
    """Detect and rewrite a captured graph in place (both capture routes); returns it and the report."""
    report, cands = inspect_captured(captured)
    return rewrite(captured.gm, cands), report


def convert(model: torch.nn.Module, *example_inputs, method: str = "export", dynamic_seq_dim: int | None = None,
            **example_kwargs):
    """Capture `model`, rewrite every verified linear attention; returns (module, report).

    The module is a torch.fx.GraphModule that shares the model's Parameter objects, keeps its
    state_dict keys and submodule tree, and is specialised to the example inputs' shapes, but
    for the sequence length when `dynamic_seq_dim` names its dimension (export only).
    """
    captured = capture(model, *example_inputs, method=method, dynamic_seq_dim=dynamic_seq_dim, **example_kwargs)
    return convert_captured(captured)


def rewrite_model(model: torch.nn.Module, *example_inputs, method: str = "export", **example_kwargs) -> GraphModule:
    """The model with each causal linear attention replaced by one `lasp_fx.linear_attention` op.

    Args:
        model: any nn.Module (not modified).
        *example_inputs: inputs of one forward call; the result is specialised to their shapes.
        method: "export" (a usable module) or "dynamo" (parameters become graph inputs).

    Returns:
        A GraphModule sharing the model's Parameters; `gm.meta["lasp_fx_report"]` holds the
        InspectReport, and each op node carries `node.meta["lasp_fx_match"]`.
    """
    gm, report = convert(model, *example_inputs, method=method, **example_kwargs)
    gm.meta["lasp_fx_report"] = report
    return gm


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
    cands, near = detect(gm, example_inputs)
    report = report_of(gm, cands, near)
    gm = rewrite(gm, cands)
    gm.meta["lasp_fx_report"] = report
    return gm
