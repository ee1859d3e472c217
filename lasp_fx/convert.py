"""Whole-model entry points: capture a model, then report (`inspect`) or rewrite (`convert`) its linear attention.

    report = lasp_fx.inspect(model, x)                  # what is found, where, and why not
    gm = lasp_fx.convert.rewrite_model(model, x)        # the rewritten module (shares parameters)
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from lasp_fx.capture import capture
from lasp_fx.passes import InspectReport, convert_captured


def convert(model: torch.nn.Module, *example_inputs, method: str = "export", dynamic_seq_dim: int | None = None,
            **example_kwargs):
    """Capture `model`, rewrite every verified linear attention; returns (module, report).

    The module is a torch.fx.GraphModule that shares the model's Parameter objects, keeps its
    state_dict keys and submodule tree, and is specialised to the example inputs' shapes, but for
    the sequence length when `dynamic_seq_dim` names its dimension (method "export").
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


def inspect(model: torch.nn.Module, *example_inputs, method: str = "export", **example_kwargs) -> InspectReport:
    """Find the causal linear-attention computations of `model` without changing it.

    Args:
        model: any nn.Module; it is captured (not modified) with `lasp_fx.capture.capture`.
        *example_inputs: inputs for one forward call; short sequences (T >= 4) are enough and
            keep the probes fast (they build T x T tensors of the original attention).
        method: "export" or "dynamo" (see `capture`).

    Returns:
        InspectReport with `.matches` and `.near_misses` (each with its source line); print it
        for a table.

    Raises:
        CaptureError: the model cannot be captured as one graph (reason, source line, hint).
    """
    return convert(model, *example_inputs, method=method, **example_kwargs)[1]
