"""`lasp-fx convert TARGET --out PATH`: write the model with its linear attention rewritten into the lasp_fx op.

`--out model.pt2` writes a torch.export program (`import lasp_fx; torch.export.load(path).module()`), the
report beside it and inside; `--out folder` readable Python (module.py, class Converted, the weights beside
it, found relative to it) and report.txt. Either runs at any sequence length (dim --seq-dim of every input)
and under `lasp_fx.parallelize` like the original; the other sizes and the device are the example's.
"""

from __future__ import annotations

import os
import re

import torch
import typer
from torch.fx import CodeGen, GraphModule
from torch.utils import _pytree as pytree

from lasp_fx.capture import FIXED_LENGTH_HINT, CaptureError
from lasp_fx.cli.errors import CliError, friendly, quiet_torch
from lasp_fx.cli.help import examples
from lasp_fx.cli.options import TARGET_ARG, ModelOptions, model_options

EPILOG = examples(
    "lasp-fx convert examples.models:RetNetLM --out retnet.pt2",
    "lasp-fx convert examples/models/gated.py:GatedLM --out gated_lasp/",
    "lasp-fx convert my_model.py:build --input-shape 2,256,512 --out mine.pt2",
    "python -c \"import lasp_fx, torch; print(torch.export.load('retnet.pt2'))\"",
)
CLASS_NAME = "Converted"


@friendly
@model_options
def convert(
    ctx: typer.Context,
    target: str = TARGET_ARG,
    out: str = typer.Option(..., "--out", metavar="PATH", show_default=False,
                            help="FILE.pt2 (torch.export program) or a folder (readable Python)."),
    model: ModelOptions = None,
    seq_dim: int = typer.Option(1, "--seq-dim", metavar="DIM",
                                help="The sequence dimension of every input that has one; its length stays free."),
    fixed_length: bool = typer.Option(False, "--fixed-length", metavar="",
                                      help="Fix the length to the example's too (for models whose code needs it)."),
):
    """Rewrite a model's linear attention into the lasp_fx op; write the module (any length) and the report."""
    from lasp_fx.convert import convert as convert_model

    if not out.endswith(".pt2") and os.path.isdir(out) and os.listdir(out):
        raise CliError(f"--out {out} is a folder that is not empty", "name a new folder, or remove this one first")
    ex = model.load(target)
    dynamic = None if fixed_length else seq_dim
    if dynamic is not None and not any(t.dim() > dynamic for t in _tensors(ex)):
        raise CliError(f"--seq-dim {seq_dim}: no input has a dimension {seq_dim} (inputs {ex.describe()})",
                       "name the inputs' sequence dimension with --seq-dim, or pass --fixed-length")
    try:
        with quiet_torch(ctx):
            gm, report = convert_model(ex.model, *ex.args, dynamic_seq_dim=dynamic, **ex.kwargs)
    except CaptureError as e:
        if e.hint == FIXED_LENGTH_HINT:
            e.hint += ", or pass --fixed-length for a module that runs at the example's length only"
        raise
    typer.echo(str(report))
    if not report.matches:
        raise CliError(f"no linear attention found in {target}: nothing to rewrite",
                       "the report above lists the near-misses and why each was left alone")
    os.makedirs(os.path.dirname(os.path.abspath(out.rstrip(os.sep))), exist_ok=True)  # as --out names it
    with quiet_torch(ctx):
        if out.endswith(".pt2"):
            written = _save_program(gm, ex, str(report), out, dynamic)
        else:
            written = _save_folder(gm, str(report), out, target, model.device)
    typer.echo(f"\nwrote {', '.join(written)}")


def _tensors(ex) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves((ex.args, ex.kwargs)) if isinstance(t, torch.Tensor)]


def _save_program(gm: GraphModule, ex, report: str, path: str, seq_dim: int | None) -> list[str]:
    from lasp_fx.capture import seq_dynamic_shapes

    dynamic = None if seq_dim is None else seq_dynamic_shapes(gm, ex.args, ex.kwargs, seq_dim)
    program = torch.export.export(gm, ex.args, ex.kwargs or None, dynamic_shapes=dynamic, strict=False)
    torch.export.save(program, path, extra_files={"report.txt": report})
    with open(path + ".report.txt", "w") as f:
        f.write(report + "\n")
    return [path, path + ".report.txt"]


def _save_folder(gm: GraphModule, report: str, folder: str, target: str, device: str) -> list[str]:
    gm = _plain(gm)
    gm.to_folder(folder, CLASS_NAME)
    module_py = os.path.join(folder, "module.py")
    with open(module_py) as f:
        code = f.read()
    # to_folder writes the folder's path into every torch.load: load relative to module.py instead
    code = re.sub(r"torch\.load\(r'" + re.escape(str(folder).rstrip("/")) + r"/([^']+)'",
                  r"torch.load(os.path.join(_HERE, '\1')", code)
    if device != "cpu":  # to_folder makes the module's own parameters and buffers on the CPU, then loads into them
        code = re.sub(r"^( *)(self\.load_state_dict\(.*)$", rf"\1\2\n\1self.to({device!r})", code, count=1,
                      flags=re.M)
    header = (f'"""{target} with its linear attention rewritten into lasp_fx\'s op (lasp-fx convert); '
              'see report.txt."""\nimport os\n\nimport lasp_fx  # noqa: F401 (registers torch.ops.lasp_fx, '
              'which forward calls)\n\n_HERE = os.path.dirname(os.path.abspath(__file__))\n')
    with open(module_py, "w") as f:
        f.write(header + code)
    with open(os.path.join(folder, "report.txt"), "w") as f:
        f.write(report + "\n")
    return [module_py, os.path.join(folder, "report.txt")]


def _plain(gm: GraphModule) -> GraphModule:
    """The module with a plain forward(inputs...) -> outputs, as to_folder can write it.

    torch.export's module keeps its calling convention as pytree specs on the module and an
    input-guard submodule (not picklable); both are turned into plain graph code here.
    """
    info = getattr(gm.graph._codegen, "pytree_info", None)
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        gm.delete_submodule("_guards_fn")
    if info is not None and info.out_spec is not None:
        output = graph.output_node()
        flat = output.args[0] if isinstance(output.args[0], (tuple, list)) else (output.args[0],)
        output.args = (pytree.tree_unflatten(list(flat), info.out_spec),)
    graph.set_codegen(CodeGen())
    gm.recompile()
    return gm
