"""Errors of the command line: one readable line and a hint, exit code 2; the traceback only with --debug."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import traceback
import warnings

import typer

EXIT_CODE = 2


class CliError(Exception):
    """A failure the user can fix: `message` says what is wrong, `hint` what to do."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


# typer's own control flow (exit, abort, usage errors) passes through; typer >= 0.20 vendors click
_PASS_THROUGH = (typer.Exit, typer.Abort, next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


def friendly(command):
    """Wrap a command whose first parameter is `ctx: typer.Context`: any exception becomes
    `error: ...` + `hint: ...` on stderr and exit code 2 (with the traceback under --debug)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            if debug(kwargs.get("ctx") or args[0]):
                traceback.print_exc()
            message, hint = describe(e)
            typer.echo(f"error: {message}", err=True)
            typer.echo(f"hint: {hint}", err=True)
            raise typer.Exit(EXIT_CODE) from None

    return wrapper


def describe(e: Exception) -> tuple[str, str]:
    """(one line saying what went wrong, one line saying what to do) for any exception."""
    from lasp_fx.capture import CaptureError

    if isinstance(e, CliError):
        return one_line(e.message), one_line(e.hint)
    if isinstance(e, CaptureError):
        where = f" (at {e.source}: {e.code})" if e.source else ""
        return one_line(f"cannot capture the model as one graph: {e.reason}{where}"), one_line(e.hint)
    return (one_line(f"{type(e).__name__}: {e}{where_raised(e)}"),
            "this looks like a bug in lasp_fx or in the model: run `lasp-fx --debug ...` for the traceback")


def where_raised(e: BaseException) -> str:
    """" (at file.py:LINE: code)" of the deepest frame outside torch and lasp_fx, or ""."""
    from lasp_fx.passes.graph import is_library_path, short_path

    frames = [f for f in traceback.extract_tb(e.__traceback__) if not is_library_path(f.filename)]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {short_path(f.filename)}:{f.lineno}: {(f.line or '').strip()})"


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def quiet_torch(ctx: typer.Context):
    """Around capture and export: without --debug, torch's log lines, its prints to stderr
    (export prints the whole graph when it fails) and Python warnings stay out of the output;
    the error line says what went wrong."""
    if debug(ctx):
        yield
        return
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def debug(ctx: typer.Context) -> bool:
    """Whether `lasp-fx --debug` was given."""
    return bool(ctx.find_root().params.get("debug"))
