"""The `lasp-fx` command line through typer's CliRunner."""

from typer.testing import CliRunner

import lasp_fx
from lasp_fx.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lasp-fx {lasp_fx.__version__}"


def test_doctor_names_the_path_of_the_op():
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "torch" in result.stdout and "gloo" in result.stdout
    assert "op on cpu" in result.stdout and "PyTorch chunked path" in result.stdout


def test_unknown_command_fails():
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2
