"""The `lasp-fx` command line (typer): one module per command, wired up here."""

import typer

import lasp_fx
from lasp_fx.cli.bench import EPILOG as BENCH_EPILOG
from lasp_fx.cli.bench import bench
from lasp_fx.cli.convert import EPILOG as CONVERT_EPILOG
from lasp_fx.cli.convert import convert
from lasp_fx.cli.doctor import EPILOG as DOCTOR_EPILOG
from lasp_fx.cli.doctor import doctor
from lasp_fx.cli.help import Command, Group, examples
from lasp_fx.cli.inspect import EPILOG as INSPECT_EPILOG
from lasp_fx.cli.inspect import inspect

app = typer.Typer(
    name="lasp-fx",
    cls=Group,
    help="Sequence parallelism for linear-attention models: inspect, convert, benchmark, diagnose.",
    epilog=examples(
        "lasp-fx inspect examples.models:HybridLM",
        "lasp-fx convert examples.models:GatedLM --out gated.pt2",
        "lasp-fx bench",
        "lasp-fx doctor",
        "lasp-fx inspect --help",
    ),
    no_args_is_help=True,
    add_completion=False,
)
app.command(cls=Command, epilog=INSPECT_EPILOG)(inspect)
app.command(cls=Command, epilog=CONVERT_EPILOG)(convert)
app.command(cls=Command, epilog=BENCH_EPILOG)(bench)
app.command(cls=Command, epilog=DOCTOR_EPILOG)(doctor)


def _version(value: bool):
    if value:
        typer.echo(f"lasp-fx {lasp_fx.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
):
    """Sequence parallelism for linear-attention models."""


def main():
    app()
