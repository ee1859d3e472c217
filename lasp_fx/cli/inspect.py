"""`lasp-fx inspect TARGET`: the table of linear-attention matches, near-misses and softmax layers, optionally drawn."""

from __future__ import annotations

import os
from typing import Optional

import typer

from lasp_fx.cli.errors import CliError, friendly, quiet_torch
from lasp_fx.cli.help import examples
from lasp_fx.cli.options import TARGET_ARG, ModelOptions, model_options

EPILOG = examples(
    "lasp-fx inspect examples.models:LightningLM",
    "lasp-fx inspect examples/models/hybrid.py:HybridLM --input-shape 2,128",
    "lasp-fx inspect examples.models:RetNetLM --graph retnet.svg",
    "lasp-fx inspect my_model.py:build --inputs my_model.py:example_batch",
    "lasp-fx inspect examples.models:GatedLM --device cuda",
)


@friendly
@model_options
def inspect(
    ctx: typer.Context,
    target: str = TARGET_ARG,
    model: ModelOptions = None,
    graph: Optional[str] = typer.Option(None, "--graph", metavar="FILE", help="Draw the captured graph, "
                                        "matches highlighted: FILE.svg or FILE.png."),
    method: str = typer.Option("export", "--method", metavar="METHOD",
                               help="Capture with torch.export (export) or torch.compile's front end (dynamo)."),
):
    """Find the causal linear attention in a model: what is rewritten, where, and what is left alone."""
    from lasp_fx.capture import capture
    from lasp_fx.passes import find
    from lasp_fx.passes.detect.probe import region

    if graph is not None and os.path.splitext(graph)[1].lower() not in (".svg", ".png"):
        raise CliError(f"--graph {graph!r}: unknown picture format", "name a .svg or .png file")
    if method not in ("export", "dynamo"):
        raise CliError(f"--method {method!r} is not a capture method", "use export or dynamo")
    ex = model.load(target)
    with quiet_torch(ctx):
        captured = capture(ex.model, *ex.args, method=method, **ex.kwargs)
        cands, report = find(captured.gm, captured.example_inputs)
    typer.echo(f"{target} on inputs {ex.describe()}:")
    typer.echo(str(report))
    left = [*report.near_misses, *report.softmax]
    lines = sorted({(m.source, m.code) for m in [*report.matches, *left] if m.code})
    if lines:
        typer.echo("\nsource lines:")
        for source, code in lines:
            typer.echo(f"  {source}  {code}")
    if graph is not None:
        regions = [(f"{m.source} {m.module} ({m.family})", set(region(c)) | {c.out})
                   for c, m in zip(cands, report.matches[len(report.matches) - len(cands):])]  # after direct calls
        _draw(captured.gm, regions, [(f"{n.source} {n.module}: {n.reason}", n.node) for n in report.near_misses], graph)


def _draw(gm, regions, near, path: str) -> None:
    from lasp_fx.cli import drawing

    d = drawing.layout(gm, regions, near)
    if path.lower().endswith(".svg"):
        with open(path, "w") as f:
            f.write(drawing.to_svg(d))
    else:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise CliError("--graph FILE.png needs matplotlib, which is not installed",
                           "pip install matplotlib, or draw an .svg (no dependency)") from e
        drawing.to_png(d, path)
    marked = sum(len(r) for _, r in regions)
    typer.echo(f"\ngraph: {path} ({len(d.boxes)} nodes, {marked} in {len(regions)} match(es))")
