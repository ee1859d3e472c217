"""`lasp-fx inspect TARGET`: the table of linear-attention matches, near-misses and softmax layers, optionally drawn."""

from __future__ import annotations

import os
from typing import List, Optional

import typer

from lasp_fx.cli.errors import CliError, friendly, quiet_torch
from lasp_fx.cli.help import examples
from lasp_fx.cli.target import DEVICES, DTYPES, Example, build_model, check_device, example

EPILOG = examples(
    "lasp-fx inspect examples.models:LightningLM",
    "lasp-fx inspect examples/models/hybrid.py:HybridLM --input-shape 2,128",
    "lasp-fx inspect examples.models:RetNetLM --graph retnet.svg",
    "lasp-fx inspect my_model.py:build --inputs my_model.py:example_batch",
    "lasp-fx inspect examples.models:GatedLM --device cuda",
)

# The options every command that builds a model takes (inspect, convert).
TARGET_ARG = typer.Argument(..., metavar="TARGET", show_default=False,
                            help="path/to/file.py:factory or package.module:factory; called with no arguments.")
SHAPE_OPT = typer.Option(None, "--input-shape", metavar="SIZES", help="Shape of one input, e.g. 2,64; repeat for "
                         "several inputs. Token ids if the model starts with nn.Embedding, else random floats. "
                         "Default: guessed from the first layer (2,64 tokens).")
DTYPE_OPT = typer.Option("float32", "--dtype", metavar="DTYPE",
                         help=f"Model and float-input dtype: {', '.join(DTYPES)}.")
VOCAB_OPT = typer.Option(None, "--vocab", metavar="N", help="Token ids are drawn below this (default: the "
                         "embedding's size).")
INPUTS_OPT = typer.Option(None, "--inputs", metavar="MODULE:FACTORY", help="A function returning the example "
                          "inputs (a tensor, a tuple, or a dict of keyword inputs) instead of --input-shape.")
SEED_OPT = typer.Option(0, "--seed", metavar="N", help="Seed for the model's initialisation and the random inputs.")
DEVICE_OPT = typer.Option("cpu", "--device", metavar="DEVICE",
                          help=f"Where the model and its example inputs live: {', '.join(DEVICES)}.")


def load(target, input_shape, dtype, vocab, inputs, seed, device="cpu") -> Example:
    """The model TARGET builds and its example inputs (the options of inspect and convert)."""
    if dtype not in DTYPES:
        raise CliError(f"--dtype {dtype!r} is not supported", f"use one of {', '.join(DTYPES)}")
    check_device(device)
    model = build_model(target, dtype, seed, device)
    return example(model, target, list(input_shape or []), dtype, vocab, inputs, seed, device)


@friendly
def inspect(
    ctx: typer.Context,
    target: str = TARGET_ARG,
    input_shape: Optional[List[str]] = SHAPE_OPT,
    dtype: str = DTYPE_OPT,
    vocab: Optional[int] = VOCAB_OPT,
    inputs: Optional[str] = INPUTS_OPT,
    seed: int = SEED_OPT,
    device: str = DEVICE_OPT,
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
    ex = load(target, input_shape, dtype, vocab, inputs, seed, device)
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
