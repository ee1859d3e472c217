"""The options of the commands that build TARGET's model and its example inputs (inspect, convert), declared once.

A command takes `target: str = TARGET_ARG` and one parameter `model: ModelOptions`; `@model_options`
shows typer the options below in that parameter's place (so each command's help keeps its order)
and hands the command their values as one ModelOptions, whose `load(target)` builds the example.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import List, Optional

import typer

from lasp_fx.cli.errors import CliError
from lasp_fx.cli.target import DEVICES, DTYPES, Example, build_model, check_device, example

TARGET_ARG = typer.Argument(..., metavar="TARGET", show_default=False,
                            help="path/to/file.py:factory or package.module:factory; called with no arguments.")

_OPTIONS = [  # (parameter, type, option), in the order of the help pages
    ("input_shape", Optional[List[str]],
     typer.Option(None, "--input-shape", metavar="SIZES", help="Shape of one input, e.g. 2,64; repeat for several "
                  "inputs. Token ids if the model starts with nn.Embedding, else random floats. Default: guessed "
                  "from the first layer (2,64 tokens).")),
    ("dtype", str, typer.Option("float32", "--dtype", metavar="DTYPE",
                                help=f"Model and float-input dtype: {', '.join(DTYPES)}.")),
    ("vocab", Optional[int], typer.Option(None, "--vocab", metavar="N", help="Token ids are drawn below this "
                                          "(default: the embedding's size).")),
    ("inputs", Optional[str], typer.Option(None, "--inputs", metavar="MODULE:FACTORY", help="A function returning "
                                           "the example inputs (a tensor, a tuple, or a dict of keyword inputs) "
                                           "instead of --input-shape.")),
    ("seed", int, typer.Option(0, "--seed", metavar="N", help="Seed for the model's initialisation and the random "
                               "inputs.")),
    ("device", str, typer.Option("cpu", "--device", metavar="DEVICE",
                                 help=f"Where the model and its example inputs live: {', '.join(DEVICES)}.")),
]


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The values of the options above, as the command line gave them."""

    input_shape: Optional[List[str]]
    dtype: str
    vocab: Optional[int]
    inputs: Optional[str]
    seed: int
    device: str

    def load(self, target: str) -> Example:
        """The model TARGET builds and its example inputs."""
        if self.dtype not in DTYPES:
            raise CliError(f"--dtype {self.dtype!r} is not supported", f"use one of {', '.join(DTYPES)}")
        check_device(self.device)
        model = build_model(target, self.dtype, self.seed, self.device)
        return example(model, target, list(self.input_shape or []), self.dtype, self.vocab, self.inputs, self.seed,
                       self.device)


def model_options(command):
    """`command` with its parameter `model` shown to typer as the options above, and given to it
    as their ModelOptions."""
    hints = typing.get_type_hints(command)
    params = []
    for p in inspect.signature(command).parameters.values():
        if p.name == "model":
            params += [inspect.Parameter(name, p.POSITIONAL_OR_KEYWORD, default=option, annotation=kind)
                       for name, kind, option in _OPTIONS]
        else:
            params.append(p.replace(annotation=hints.get(p.name, p.annotation)))
    names = [name for name, _, _ in _OPTIONS]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        values = {name: kwargs.pop(name) for name in names}
        return command(*args, model=ModelOptions(**values), **kwargs)

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
