"""The `lasp-fx` command line through typer's CliRunner: every command on the example models, on every device,
and its errors."""

import importlib
import json
import re
import shlex
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
from lasp_fx.distributed.spawn import device_worlds, run_spawned
from lasp_fx.numerics import rel_rms
from tests.helpers import cli_workers

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


    class Direct(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            import lasp_fx

            q, k, v = self.qkv(x).unflatten(-1, (3, 2, 8)).unbind(2)
            return lasp_fx.linear_attention(q, k, v)


    class Loopy(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)

        def forward(self, x):
            return torch.stack([self.proj(x[:, t]) for t in range(x.shape[1])], 1)


    class LenScaled(nn.Module):  # linear attention divided by the length: the op's scale cannot follow it
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(16, 48)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
            causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
            return ((q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0) / n) @ v


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


PAGES = {"lasp-fx": [], "inspect": ["inspect"], "convert": ["convert"], "bench": ["bench"], "doctor": ["doctor"]}


def _epilog(page: str) -> str:
    if page == "lasp-fx":
        return app.info.epilog
    return next(c.epilog for c in app.registered_commands if (c.name or c.callback.__name__) == page)


def _example_commands(page: str) -> list[str]:
    paragraphs = [p.strip() for p in _epilog(page).split("\n\n")]
    assert paragraphs[0] in ("Example:", "Examples:"), paragraphs[0]
    return paragraphs[1:]


@pytest.mark.parametrize("columns", [80, 120], ids=lambda c: f"{c}-columns")
@pytest.mark.parametrize("page", list(PAGES))
def test_help_page_copy_pastes(page, columns):
    result = runner.invoke(app, [*PAGES[page], "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert not re.search(r"<\w+(\[[\w, \[\]]*\])?>", text), f"a Python type is shown:\n{text}"  # <bool>, <list[str]>
    assert "BOOLEAN" not in text and "list[" not in text
    usage = next(ln for ln in text.splitlines() if "Usage:" in ln)
    assert "{" not in usage and "}" not in usage, usage
    for flag in ("--help", "--debug", "--version", "--fixed-length"):  # a flag's help follows it directly
        rows = [ln for ln in text.splitlines() if re.search(rf"{flag}\b", ln) and ln.lstrip("│ ").startswith("--")]
        for ln in rows:
            assert re.match(rf"[│ ]*{flag}\s+[A-Z][a-z]", ln), ln
    lines = [ln.strip(" │") for ln in text.splitlines()]
    commands = _example_commands(page)
    assert commands and all(c.startswith(("lasp-fx ", "python ")) for c in commands), commands
    for command in commands:  # each on one line of its own, whole: copy-paste gives the command
        assert command in lines, f"{command!r} is wrapped at {columns} columns:\n{text}"


@pytest.mark.parametrize("command", [c for page in PAGES for c in _example_commands(page) if c.startswith("lasp-fx")])
def test_help_examples_name_real_options(command):
    # --help after the arguments: the options before it must all exist (an unknown one fails first)
    result = invoke(*shlex.split(command)[1:], "--help")
    assert result.exit_code == 0, result.output


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


@pytest.mark.parametrize("target, softmax", [
    ("examples.models:HybridLM", r"examples/models/hybrid\.py:\d+ +blocks\.3\.mixer .*causal"),
    ("{script}:Softmax", r"user_models\.py:\d+ +- .*causal"),
], ids=["HybridLM", "Softmax"])
def test_inspect_lists_the_softmax_layers_it_leaves_alone(target, softmax, script, device):
    shape = "2,24" if "examples" in target else "2,10,16"
    result = invoke("inspect", target.format(script=script), "--input-shape", shape, "--device", device)
    assert result.exit_code == 0, result.output
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith("softmax ")]
    assert len(rows) == 1 and re.search(softmax, rows[0]), result.stdout
    assert "1 softmax attention layer(s) left as they are" in result.stdout


@pytest.mark.parametrize("target, shape", [("examples.models:HybridLM", (2, 24)), ("{script}:Direct", (2, 10, 16))],
                         ids=["HybridLM", "direct-op-call"])
def test_inspect_prints_what_lasp_fx_inspect_reports(target, shape, script, device):
    target = target.format(script=script)
    result = invoke("inspect", target, "--input-shape", ",".join(map(str, shape)), "--device", device)
    assert result.exit_code == 0, result.output
    from lasp_fx.cli.target import load_factory

    torch.manual_seed(0)  # as the command builds the model and its input (--seed 0)
    model = load_factory(target)().to(device)
    torch.manual_seed(0)
    x = torch.randint(0, 64, shape) if len(shape) == 2 else torch.randn(shape)
    report = lasp_fx.inspect(model, x.to(device))
    assert report.matches and str(report) in result.stdout, f"{report}\n---\n{result.stdout}"


def _load_folder(folder, monkeypatch):
    """`from <folder> import Converted`, as a user with the folder's parent on sys.path would."""
    monkeypatch.syspath_prepend(str(folder.parent))
    module = importlib.import_module(folder.name)
    monkeypatch.delitem(sys.modules, folder.name)
    return module.Converted()


@pytest.mark.parametrize("name, form", [("GatedLM", "pt2"), ("RetNetLM", "folder")])
def test_convert_writes_a_module_that_computes_the_original_at_any_length(name, form, tmp_path, monkeypatch, device):
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
    reference = _model(name, torch.float64).to(device)
    for T in (40, 17, 96):  # the example's length and two others
        ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(T)).to(device)
        got, ref = converted(ids), reference(ids)
        assert got.device == ref.device, f"the converted module computes on {got.device}, the model on {ref.device}"
        assert rel_rms(got, ref) <= 1e-12, f"T={T}"


@pytest.mark.parametrize("device, world_size", device_worlds(2))
def test_a_converted_module_runs_under_parallelize_like_the_original(device, world_size, tmp_path):
    cases = [("examples.models:GatedLM", "gated.pt2"), ("examples.models:RetNetLM", "retnet")]
    ids = torch.randint(0, 64, (2, 36), generator=torch.Generator().manual_seed(5))  # not the example's length
    per_rank = run_spawned(cli_workers.convert_and_parallelize, world_size, cases, str(tmp_path), ids, device,
                           device=device, timeout=900)
    for i, (target, _) in enumerate(cases):
        model = _model(target.split(":")[1], torch.float64).to(device)
        logits = model(ids.to(device))
        logits.square().sum().backward()
        for rank, results in enumerate(per_rank):
            got, where = results[i], f"{target} rank {rank}/{world_size}"
            assert rel_rms(torch.tensor(got["logits"], dtype=torch.float64), logits.detach().cpu()) <= 1e-10, where
            assert set(got["grads"]) == {n for n, _ in model.named_parameters()}, where
            for n, p in model.named_parameters():
                err = rel_rms(torch.tensor(got["grads"][n], dtype=torch.float64), p.grad.cpu())
                assert err <= 1e-10, f"{where}: gradient of {n} off by {err:.2e}"


def test_convert_refuses_a_model_without_linear_attention(script, tmp_path, device):
    result = invoke("convert", f"{script}:Softmax", "--input-shape", "2,10,16", "--out", tmp_path / "x.pt2",
                    "--device", device)
    assert result.exit_code == 2
    assert "no linear attention found" in result.stderr and "the report above" in result.stderr
    assert not (tmp_path / "x.pt2").exists()


def test_bench_writes_table_json_and_plot(tmp_path, device):
    # LASP needs 2 ranks: on CUDA one per GPU, so a single-GPU machine benchmarks the op only (--ranks 0)
    ranks = "2" if device == "cpu" or torch.cuda.device_count() >= 2 else "0"
    threads_before = torch.get_num_threads()
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
    if device == "cpu":  # one thread, as each spawned rank: the op table and LASP's one-device row compare
        assert data["threads"] == 1 and torch.get_num_threads() == threads_before
    if ranks == "2":
        assert [r["method"] for r in data["sp"]] == ["ring", "allgather", "one device"]
        assert all(r["ranks"] == 2 and r["tokens"] == 80 and r["err_o"] < tol and r["fwdbwd_ms"] > 0
                   for r in data["sp"])
        assert "| 2 | 40 | 80 | allgather |" in table and "| 2 | 40 | 80 | one device |" in table
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
    "method-unknown": (["inspect", "examples.models:LinearLM", "--method", "jit"], "not a capture method",
                       "export or dynamo"),
    "bench-lengths": (["bench", "--lengths", "abc"], "--lengths 'abc': 'abc' is not a positive integer",
                      "e.g. --lengths 64,256"),
    "bench-ranks": (["bench", "--ranks", "2,x", "--device", "cpu"], "--ranks '2,x': 'x' is not a positive integer",
                    "e.g. --ranks 2,4"),
    "bench-one-rank": (["bench", "--ranks", "1", "--device", "cpu"], "needs at least 2 ranks", "--ranks 2,4"),
    "convert-seq-dim": (["convert", "examples.models:LinearLM", "--seq-dim", "2", "--out", "x.pt2"],
                        "--seq-dim 2: no input has a dimension 2", "--fixed-length"),
    "convert-fixed-length": (["convert", "{script}:Loopy", "--input-shape", "2,10,16", "--out", "x.pt2"],
                             "cannot capture the model as one graph", "pass --fixed-length"),
    "convert-length-as-number": (["convert", "{script}:LenScaled", "--input-shape", "2,10,16", "--out", "x.pt2"],
                                 "no linear attention found", "the report above"),
}
if not torch.cuda.is_available():
    ERRORS["device-without-gpu"] = (["convert", "examples.models:LinearLM", "--device", "cuda", "--out", "x.pt2"],
                                    "--device cuda: no GPU is available here", "use --device cpu")


def test_convert_says_why_a_length_used_as_a_number_is_not_rewritten(script, tmp_path):
    # at one length the division is a constant scale; the module convert writes must hold at every length
    result = invoke("convert", f"{script}:LenScaled", "--input-shape", "2,10,16", "--out", tmp_path / "x.pt2")
    assert result.exit_code == 2 and not (tmp_path / "x.pt2").exists()
    assert re.search(r"near-miss .*uses the sequence length as a number \(.*user_models\.py:\d+", result.stdout)


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
    if args[0] == "bench":
        assert "--input-shape" not in result.stderr  # the option given is named, not inspect's


def test_debug_adds_the_traceback():
    result = invoke("--debug", "inspect", "no_such_pkg.models:Model")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and result.stderr.strip().splitlines()[-2].startswith("error: ")
