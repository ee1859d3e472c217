"""`lasp-fx bench`: op and sequence-parallel timings with a progress bar, written as markdown, JSON and a plot."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict

import torch
import typer

from lasp_fx.cli.bench_runs import Shape, op_rows, sp_worker
from lasp_fx.cli.errors import CliError, friendly
from lasp_fx.cli.help import examples
from lasp_fx.cli.target import parse_sizes

EPILOG = examples(
    "lasp-fx bench",
    "lasp-fx bench --lengths 1024,4096 --ranks 2,4 --local-tokens 8192",
    "lasp-fx bench --device cpu --heads 4 --dim 32 --reps 20 --out bench-cpu",
)
# (lengths, heads, dim, dtype, local tokens per rank, reps) when not given
DEFAULTS = {"cpu": ("64,256", 2, 16, "float32", 128, 5), "cuda": ("1024,4096,16384", 16, 128, "bfloat16", 8192, 20)}
OP_COLUMNS = ["impl", "tokens", "fwd_ms", "fwdbwd_ms", "fwd_gflops", "fwdbwd_gflops", "err_o", "err_dq"]
SP_COLUMNS = ["ranks", "local_tokens", "tokens", "method", "fwd_ms", "fwdbwd_ms", "err_o"]


@friendly
def bench(
    ctx: typer.Context,
    out: str = typer.Option("lasp-fx-bench", "--out", metavar="FOLDER",
                            help="Folder for bench.md, bench.json and bench.png."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="cpu, cuda or auto (cuda when available)."),
    lengths: str = typer.Option(None, "--lengths", metavar="SIZES", show_default=False,
                                help="Sequence lengths of the op benchmark (CPU 64,256; GPU 1024,4096,16384)."),
    ranks: str = typer.Option(None, "--ranks", metavar="SIZES", show_default=False,
                              help="Rank counts of the LASP benchmark, e.g. 2,3 (default: 2 on CPU, every GPU "
                              "on CUDA); 0 skips it."),
    local_tokens: int = typer.Option(None, "--local-tokens", metavar="N", show_default=False,
                                     help="Tokens per rank in the LASP benchmark (CPU 128, GPU 8192)."),
    heads: int = typer.Option(None, "--heads", metavar="N", show_default=False, help="Heads (CPU 2, GPU 16)."),
    dim: int = typer.Option(None, "--dim", metavar="N", show_default=False, help="Head dim D = E (CPU 16, GPU 128)."),
    dtype: str = typer.Option(None, "--dtype", metavar="DTYPE", show_default=False,
                              help="CPU float32, GPU bfloat16."),
    reps: int = typer.Option(None, "--reps", metavar="N", show_default=False,
                             help="Timed calls per median (CPU 5, GPU 20)."),
    warmup: int = typer.Option(2, "--warmup", metavar="N", help="Untimed calls before timing."),
):
    """Time lasp_fx's op against the float64 reference and SDPA, and LASP across spawned ranks.

    On the CPU every timing runs one thread per process, as each spawned rank does, so that the
    LASP table's one-device row and the op table's rows measure the same thing.
    """
    from lasp_fx.distributed.spawn import run_spawned

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if device not in DEFAULTS or (device == "cuda" and not torch.cuda.is_available()):
        raise CliError(f"--device {device!r} is not available here", "use cpu, or cuda on a machine with a GPU")
    d_len, d_heads, d_dim, d_dtype, d_local, d_reps = DEFAULTS[device]
    shape = Shape(heads or d_heads, dim or d_dim, dtype or d_dtype, device)
    if not hasattr(torch, shape.dtype) or not isinstance(getattr(torch, shape.dtype), torch.dtype):
        raise CliError(f"--dtype {shape.dtype!r} is not a torch dtype", "use float32, bfloat16, float16 or float64")
    ts = parse_sizes(lengths or d_len, "--lengths", "--lengths 64,256")
    rank_counts = _ranks(ranks, device)
    local, reps = local_tokens or d_local, reps or d_reps
    jobs = [("op", t) for t in ts] + [("sp", p) for p in rank_counts]
    op, sp = [], []
    with _threads(device), typer.progressbar(jobs, label=f"benchmarking on {_card(device)}") as progress:
        threads = torch.get_num_threads()
        for kind, n in progress:
            if kind == "op":
                op += op_rows(shape, n, warmup, reps)
            else:
                per_rank = run_spawned(sp_worker, n, asdict(shape), local, warmup, reps, ["ring", "allgather"],
                                       device=device, timeout=600)
                sp += per_rank[0]
    os.makedirs(out, exist_ok=True)
    md = _markdown(shape, op, sp)
    with open(os.path.join(out, "bench.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "bench.json"), "w") as f:
        json.dump({"card": _card(device), "torch": torch.__version__, "threads": threads, "op": op, "sp": sp}, f,
                  indent=1)
    written = ["bench.md", "bench.json"] + (["bench.png"] if _plot(op, sp, os.path.join(out, "bench.png")) else [])
    typer.echo(md)
    typer.echo(f"wrote {', '.join(os.path.join(out, w) for w in written)}")


def _ranks(text: str | None, device: str) -> tuple[int, ...]:
    if text is None:
        return (torch.cuda.device_count(),) if device == "cuda" and torch.cuda.device_count() > 1 else (2,)
    if text.strip() == "0":
        return ()
    counts = parse_sizes(text, "--ranks", "--ranks 2,4")
    if device == "cuda" and max(counts) > torch.cuda.device_count():
        raise CliError(f"--ranks {text}: this machine has {torch.cuda.device_count()} GPU(s)",
                       "use at most one rank per GPU")
    if min(counts) < 2:
        raise CliError(f"--ranks {text}: sequence parallelism needs at least 2 ranks", "e.g. --ranks 2,4")
    return counts


@contextlib.contextmanager
def _threads(device: str):
    """One thread on the CPU while timing (a spawned rank has one): more threads of a small op wait
    for each other at every parallel region, a scheduler time slice each time when other work shares
    the cores, and the op table would then time the machine's load rather than the op."""
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _card(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread per process"


def _markdown(shape: Shape, op: list[dict], sp: list[dict]) -> str:
    head = (f"# lasp-fx bench on {_card(shape.device)}\n\nB={shape.batch}, H={shape.heads}, D=E={shape.dim}, "
            f"{shape.dtype}, per-head decay; medians in ms; err = relative RMS against the float64 reference; "
            "gflops = FLOPs of the chunked algorithm / time\n")
    parts = [head, "## op, one device\n", _table(op, OP_COLUMNS)]
    if sp:
        parts += ["## LASP across ranks\n\nEach rank holds local_tokens of a sequence of `tokens`; \"one device\" "
                  "runs the op on the whole sequence on one rank's device.\n", _table(sp, SP_COLUMNS)]
    return "\n".join(parts)


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2e}" if v and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plot(op: list[dict], sp: list[dict], path: str) -> bool:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        typer.echo("matplotlib is not installed: no plot (pip install matplotlib)", err=True)
        return False
    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    ax_op, ax_sp = fig.subplots(1, 2)
    for impl in dict.fromkeys(r["impl"] for r in op):
        rows = [r for r in op if r["impl"] == impl]
        for key, style in (("fwd_ms", "--"), ("fwdbwd_ms", "-")):
            ax_op.plot([r["tokens"] for r in rows], [r[key] for r in rows], style, marker="o",
                       label=f"{impl} {key[:-3]}")
    ax_op.set(xscale="log", yscale="log", xlabel="tokens", ylabel="ms (median)", title="op, one device")
    ax_op.legend(fontsize=7)
    methods = list(dict.fromkeys(r["method"] for r in sp))
    counts = list(dict.fromkeys(r["ranks"] for r in sp))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        rows = [r for r in sp if r["method"] == method]
        ax_sp.bar([counts.index(r["ranks"]) - 0.4 + width * (i + 0.5) for r in rows],
                  [r["fwdbwd_ms"] for r in rows], width=width, label=method)
    ax_sp.set_xticks(range(len(counts)), [f"P={p}" for p in counts])
    ax_sp.set(ylabel="fwd+bwd ms (median, slowest rank)", title="LASP across ranks")
    if methods:
        ax_sp.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
