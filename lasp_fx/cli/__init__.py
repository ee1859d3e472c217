"""The `lasp-fx` command line (typer): one module per command, wired up here."""

import typer

import lasp_fx
from lasp_fx.cli.doctor import doctor

app = typer.Typer(
    name="lasp-fx",
    help="Sequence parallelism for linear-attention models: inspect, convert, benchmark, diagnose.",
    no_args_is_help=True,
    add_completion=False,
)
app.command(epilog="Example: lasp-fx doctor")(doctor)


def _version(value: bool):
    if value:
        typer.echo(f"lasp-fx {lasp_fx.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    """Sequence parallelism for linear-attention models."""


def main():
    app()
