"""The `lasp-fx` command line through typer's CliRunner: every command on the example models, on every device,
and its errors."""

import importlib
import json
import re
import shutil
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest
import torch
from typer.testing import CliRunner

import lasp_fx
from examples.models import MODELS
from lasp_fx.cli import app
from lasp_fx.cli.drawing import PALETTE
from lasp_fx.numerics import rel_rms

runner = CliRunner()
LINEAR_LAYERS = {"LightningLM": 2, "RetNetLM": 2, "LinearLM": 2, "GatedLM": 2, "HybridLM": 3}

# Small models written to files in a temporary folder: not in a package, as users' scripts often are.
SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn
    import torch.nn.functional as F


    class Softmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            q, k, v = self.qkv(x).unflatten(-1, (3, 2, 8)).unbind(2)
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True)


    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)

        def forward(self, x):
            if x.sum() > 0:
                return self.proj(x)
            return x


    def broken():
        raise RuntimeError("boom in the factory")


    def number():
        return 3


    def batch():
        return {"x": torch.randn(2, 10, 16)}
""")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "user_models.py"
    path.write_text(SCRIPT)
    return path


def _model(name, dtype=torch.float32):
    torch.manual_seed(0)  # the command's default --seed
    return MODELS[name.lower().removesuffix("lm")]().to(dtype)


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lasp-fx {lasp_fx.__version__}"


def test_doctor_names_the_path_of_the_op():
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    assert "torch" in result.stdout and "gloo" in result.stdout
    assert "op on cpu" in result.stdout and "PyTorch chunked path" in result.stdout
    assert "LASP all-gather" in result.stdout  # its transport: gloo here, peer memory or NCCL on GPUs


def test_doctor_says_when_the_peer_all_gather_is_turned_off(monkeypatch):
    monkeypatch.setenv("LASP_FX_PEER", "0")
    result = invoke("doctor")
    assert "NCCL (LASP_FX_PEER=0)" in result.stdout


def test_unknown_command_fails():
    assert invoke("no-such-command").exit_code == 2


@pytest.mark.parametrize("command", ["inspect", "convert", "bench", "doctor"])
def test_help_shows_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"lasp-fx {command}" in result.stdout


@pytest.mark.parametrize("target", [
    "examples.models:LightningLM",
    "examples/models/retnet.py:RetNetLM",
    "examples.models:LinearLM",
    "examples/models/gated.py:GatedLM",
    "examples.models:HybridLM",
], ids=lambda t: t.split(":")[1])
def test_inspect_lists_every_linear_attention_with_its_line(target, device):
    result = invoke("inspect", target, "--input-shape", "2,24", "--device", device)
    assert result.exit_code == 0, result.output
    matches = [ln for ln in result.stdout.splitlines() if ln.startswith("match ")]
    assert len(matches) == LINEAR_LAYERS[target.split(":")[1]], result.stdout
    assert all(re.search(r"examples/models/\w+\.py:\d+", m) for m in matches)
    assert f"{len(matches)} match(es)" in result.stdout
    for line in result.stdout.split("source lines:\n")[1].strip().splitlines():  # "  file.py:LINE  code"
        path, lineno, code = re.match(r"\s*(.+?):(\d+)  (.*)", line).groups()
        with open(path) as f:
            assert f.read().splitlines()[int(lineno) - 1].strip() == code


def test_inspect_draws_the_graph_as_svg_with_the_matches_marked(tmp_path, device):
    out = tmp_path / "graph.svg"
    result = invoke("inspect", "examples.models:HybridLM", "--input-shape", "1,16", "--graph", out, "--device", device)
    assert result.exit_code == 0, result.output
    svg = ET.parse(out).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    boxes = svg.findall("s:g/s:rect", ns)
    marked = [r for r in boxes if r.get("fill") in PALETTE]
    legend = [t.text for t in svg.findall("s:text", ns)]
    n_nodes, n_marked = map(int, re.search(r"\((\d+) nodes, (\d+) in 3 match", result.stdout).groups())
    assert len(boxes) == n_nodes and len(marked) == n_marked > 0
    assert {r.get("fill") for r in marked} == set(PALETTE[:3])  # one colour per match
    assert len(legend) == 3 and all(t.startswith("match ") and "lightning.py" in t for t in legend)


def test_inspect_draws_png(tmp_path, device):
    matplotlib_image = pytest.importorskip("matplotlib.image")
    out = tmp_path / "graph.png"
    result = invoke("inspect", "examples.models:LinearLM", "--input-shape", "1,16", "--graph", out, "--device", device)
    assert result.exit_code == 0, result.output
    pixels = matplotlib_image.imread(out)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 500
    assert (pixels[..., :3].std(axis=(0, 1)) > 0).any()  # not a blank page


def test_inspect_reports_no_attention_in_a_softmax_model(script, device):
    result = invoke("inspect", f"{script}:Softmax", "--input-shape", "2,10,16", "--device", device)
    assert result.exit_code == 0, result.output
    assert "no attention found" in result.stdout or "0 match(es)" in result.stdout


def test_inspect_takes_inputs_from_a_factory(script, device):
    result = invoke("inspect", f"{script}:Softmax", "--inputs", f"{script}:batch", "--device", device)
    assert result.exit_code == 0, result.output
    assert "x=float32 [2, 10, 16]" in result.stdout


def _load_folder(folder, monkeypatch):
    """`from <folder> import Converted`, as a user with the folder's parent on sys.path would."""
    monkeypatch.syspath_prepend(str(folder.parent))
    module = importlib.import_module(folder.name)
    monkeypatch.delitem(sys.modules, folder.name)
    return module.Converted()


@pytest.mark.parametrize("name, form", [("GatedLM", "pt2"), ("RetNetLM", "folder")])
def test_convert_writes_a_module_that_loads_and_computes_the_original(name, form, tmp_path, monkeypatch, device):
    out = tmp_path / ("model.pt2" if form == "pt2" else "converted")
    result = invoke("convert", f"examples.models:{name}", "--input-shape", "2,40", "--dtype", "float64",
                    "--out", out, "--device", device)
    assert result.exit_code == 0, result.output
    if form == "pt2":
        extra = {"report.txt": ""}
        program = torch.export.load(out, extra_files=extra)
        ops = [n for n in program.graph.nodes if "lasp_fx.linear_attention" in str(n.target)]
        assert len(ops) == 2 and "2 match(es)" in extra["report.txt"]
        assert (tmp_path / "model.pt2.report.txt").read_text() == extra["report.txt"] + "\n"
        converted = program.module()
    else:
        moved = tmp_path / "moved_retnet"
        shutil.move(out, moved)  # the weights are found relative to module.py
        code = (moved / "module.py").read_text()
        assert code.count("torch.ops.lasp_fx.linear_attention.default(") == 2 and str(out) not in code
        assert "2 match(es)" in (moved / "report.txt").read_text()
        converted = _load_folder(moved, monkeypatch)
    ids = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1)).to(device)
    ref = _model(name, torch.float64).to(device)(ids)
    out = converted(ids)
    assert out.device == ref.device, f"the converted module computes on {out.device}, the model on {ref.device}"
    assert rel_rms(out, ref) <= 1e-12


def test_convert_refuses_a_model_without_linear_attention(script, tmp_path, device):
    result = invoke("convert", f"{script}:Softmax", "--input-shape", "2,10,16", "--out", tmp_path / "x.pt2",
                    "--device", device)
    assert result.exit_code == 2
    assert "no linear attention found" in result.stderr and "lasp-fx inspect" in result.stderr
    assert not (tmp_path / "x.pt2").exists()


def test_bench_writes_table_json_and_plot(tmp_path, device):
    # LASP needs 2 ranks: on CUDA one per GPU, so a single-GPU machine benchmarks the op only (--ranks 0)
    ranks = "2" if device == "cpu" or torch.cuda.device_count() >= 2 else "0"
    result = invoke("bench", "--out", tmp_path, "--device", device, "--lengths", "32,80", "--ranks", ranks,
                    "--local-tokens", "40", "--heads", "2", "--dim", "16", "--dtype", "float32", "--reps", "2",
                    "--warmup", "1")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["impl"], r["tokens"]) for r in data["op"]] == [
        (impl, t) for t in (32, 80) for impl in ("lasp_fx", "quadratic float64", "sdpa causal")]
    tol = 1e-5 if device == "cpu" else 1e-4  # float32 against float64; Triton's kernels on GPUs (bench/check_op_gpu.py)
    for row in data["op"]:
        assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0
        if row["impl"] == "lasp_fx":
            assert row["err_o"] < tol and row["err_dq"] < tol
    table = (tmp_path / "bench.md").read_text()
    assert "| lasp_fx | 80 |" in table
    if ranks == "2":
        assert [r["method"] for r in data["sp"]] == ["ring", "allgather", "one device"]
        assert all(r["ranks"] == 2 and r["err_o"] < tol and r["fwdbwd_ms"] > 0 for r in data["sp"])
        assert "| 2 | 40 | allgather |" in table
    else:
        assert data["sp"] == []
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


ERRORS = {
    "no-factory": (["inspect", "examples.models"], "does not name a factory", "package.module:factory"),
    "no-file": (["inspect", "no/such/file.py:Model"], "no such file: no/such/file.py", "relative to"),
    "no-module": (["inspect", "no_such_pkg.models:Model"], "no module named 'no_such_pkg'", "install it"),
    "no-attribute": (["inspect", "examples.models:Lightning"], "has no attribute 'Lightning'", "LightningLM"),
    "factory-raises": (["inspect", "{script}:broken"], "broken() raised RuntimeError: boom in the factory",
                       "called with no arguments"),
    "needs-arguments": (["inspect", "examples.models.common:RMSNorm"], "RMSNorm() raised TypeError",
                        "called with no arguments"),
    "not-a-model": (["inspect", "{script}:number"], "returned a int, not a torch.nn.Module", "returns the model"),
    "shape-not-int": (["inspect", "examples.models:LinearLM", "--input-shape", "2,x"], "'x' is not a positive",
                      "--input-shape 2,64"),
    "shape-wrong-rank": (["inspect", "examples.models:LinearLM", "--input-shape", "2"],
                         "fails on inputs int64 [2]: ValueError", "the shape its forward expects"),
    "vocab-too-big": (["inspect", "examples.models:LinearLM", "--vocab", "1000"], "--vocab 1000 does not fit",
                      "between 1 and 64"),
    "capture-fails": (["inspect", "{script}:Branchy", "--input-shape", "2,10,16"],
                      "cannot capture the model as one graph", "torch.where"),
    "graph-format": (["inspect", "examples.models:LinearLM", "--graph", "g.pdf"], "unknown picture format",
                     ".svg or .png"),
    "convert-into-full-folder": (["convert", "examples.models:LinearLM", "--out", "{script_dir}"], "not empty",
                                 "new folder"),
    "device-unknown": (["inspect", "examples.models:LinearLM", "--device", "tpu"],
                       "--device 'tpu' is not a device lasp-fx runs on", "use one of cpu, cuda"),
}
if not torch.cuda.is_available():
    ERRORS["device-without-gpu"] = (["convert", "examples.models:LinearLM", "--device", "cuda", "--out", "x.pt2"],
                                    "--device cuda: no GPU is available here", "use --device cpu")


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line_and_a_hint(case, script):
    args, message, hint = ERRORS[case]
    args = [a.format(script=script, script_dir=script.parent) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), result.stderr
    assert message in lines[0] and hint in lines[1]
    assert "Traceback" not in result.output


def test_debug_adds_the_traceback():
    result = invoke("--debug", "inspect", "no_such_pkg.models:Model")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-2].startswith("error: ")
