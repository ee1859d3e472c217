"""Help pages that copy-paste: flags without a type, no internal type names, example commands on one line each.

typer shows every parameter's Python type (`--debug <bool>`, `--input-shape <list[str]>`) and wraps a
required argument's name in braces in the usage line (`{target}`); the options here name their value
(metavar), and these command classes hide the rest. Example commands are separate paragraphs, short
enough (EXAMPLE_WIDTH) that no terminal of 80 columns or more wraps one.
"""

from __future__ import annotations

import re

from typer.core import TyperCommand, TyperGroup

EXAMPLE_WIDTH = 74  # 80 columns less the help page's margins


class _CleanHelp:
    def get_params(self, ctx):
        params = super().get_params(ctx)
        for p in params:
            if getattr(p, "is_flag", False):
                p.metavar = ""  # a flag takes no value: nothing to show after it
            elif getattr(p, "param_type_name", "") == "argument" and hasattr(p, "display_type_rich"):
                p.display_type_rich = _no_type  # the argument's metavar (TARGET) says it
        return params

    def collect_usage_pieces(self, ctx):
        return [re.sub(r"^\{(.+)\}$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]


def _no_type(ctx=None):
    return None


class Command(_CleanHelp, TyperCommand):
    """A command whose help page shows value names, not Python types."""


class Group(_CleanHelp, TyperGroup):
    """The root command, likewise."""


def examples(*commands: str) -> str:
    """An epilog listing example commands (each at most EXAMPLE_WIDTH characters), one paragraph each:
    typer and click rewrap the lines of a paragraph."""
    title = "Example:" if len(commands) == 1 else "Examples:"
    return "\n\n".join([title, *commands])
