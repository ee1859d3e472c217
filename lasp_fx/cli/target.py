"""TARGET and example inputs: `path/to/file.py:factory` or `package.module:factory`, called with no arguments.

Inputs come from `--input-shape` (token ids when the model starts with an nn.Embedding, else
random floats; guessed from the first layer when omitted) or from an `--inputs module:factory`
returning a tensor, a tuple of tensors or a dict of keyword arguments. Every failure is a
CliError that says what is wrong and what to type instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_map

from lasp_fx.cli.errors import CliError, one_line, where_raised

TARGET_FORMS = "path/to/file.py:factory or package.module:factory (e.g. examples.models:LightningLM)"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda")
DEFAULT_TOKENS = 64


@dataclass
class Example:
    """A model and the inputs of one forward call."""

    model: nn.Module
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def describe(self) -> str:
        def one(x):
            return f"{x.dtype} {list(x.shape)}".replace("torch.", "") if isinstance(x, torch.Tensor) else repr(x)

        parts = [one(a) for a in self.args] + [f"{k}={one(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def load_factory(target: str):
    """The object TARGET names (not called yet)."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise CliError(f"TARGET {target!r} does not name a factory", f"write TARGET as {TARGET_FORMS}")
    module = _import_file(where) if where.endswith(".py") or os.sep in where else _import_module(where)
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{where} has no attribute {name!r}", _what_it_defines(module))
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliError(f"{target} is a {type(obj).__name__}, not a class or function",
                       "TARGET must name something that builds the model when called with no arguments")
    return obj


def check_device(device: str) -> None:
    """--device names a device lasp-fx takes, and one this machine has."""
    if device not in DEVICES:
        raise CliError(f"--device {device!r} is not a device lasp-fx runs on", f"use one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no GPU is available here (torch.cuda.is_available() is False)",
                       "use --device cpu, or run on a machine with a GPU and a CUDA build of torch")


def build_model(target: str, dtype: str, seed: int, device: str = "cpu") -> nn.Module:
    """Call TARGET's factory with no arguments (after seeding) and check that it made a model; on `device`."""
    factory = load_factory(target)
    torch.manual_seed(seed)
    model = _call(factory, target)
    if not isinstance(model, nn.Module):
        raise CliError(f"{target}() returned a {type(model).__name__}, not a torch.nn.Module",
                       "TARGET must be a class or function that returns the model")
    return model.to(device=device, dtype=DTYPES[dtype])


def example(model: nn.Module, target: str, shapes: list[str], dtype: str, vocab: int | None,
            inputs: str | None, seed: int, device: str = "cpu") -> Example:
    """The model with the inputs of one forward call on `device`, checked by running it once.

    Random inputs are drawn on the CPU and moved: the same seed gives the same inputs on any device.
    """
    if inputs and shapes:
        raise CliError("both --inputs and --input-shape were given", "use one of them")
    torch.manual_seed(seed)
    if inputs:
        ex = _from_factory(model, inputs)
    else:
        parsed = [parse_sizes(s, "--input-shape", SHAPE_EXAMPLE) for s in shapes] or [_guess_shape(model, target)]
        ex = Example(model, tuple(_tensor(model, s, DTYPES[dtype], vocab) for s in parsed))
    ex.args, ex.kwargs = tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, (ex.args, ex.kwargs))
    _check_runs(ex, target)
    return ex


SHAPE_EXAMPLE = "--input-shape 2,64 (a batch of 2 sequences of 64 tokens)"


def parse_sizes(text: str, option: str, example: str) -> tuple[int, ...]:
    """Positive integers separated by commas, the value of `option` ("2,64"); `example` shows one."""
    parts = [p.strip() for p in text.split(",")]
    for p in parts:
        if not p.isdigit() or int(p) == 0:
            raise CliError(f"{option} {text!r}: {p!r} is not a positive integer",
                           f"give positive integers separated by commas, e.g. {example}")
    return tuple(int(p) for p in parts)


def _first_layer(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if not any(True for _ in m.children())), None)


def _guess_shape(model: nn.Module, target: str) -> tuple[int, ...]:
    first = _first_layer(model)
    if isinstance(first, nn.Embedding):
        return (2, DEFAULT_TOKENS)
    width = getattr(first, "in_features", None) or getattr(first, "normalized_shape", (None,))[0]
    if width:
        return (2, DEFAULT_TOKENS, int(width))
    raise CliError(f"cannot guess the input shape of {target} (its first layer is {type(first).__name__})",
                   "pass --input-shape, e.g. --input-shape 2,64,512, or --inputs module:factory")


def _tensor(model: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, vocab: int | None) -> torch.Tensor:
    first = _first_layer(model)
    if not isinstance(first, nn.Embedding):
        return torch.randn(shape, dtype=dtype)
    size = first.num_embeddings
    if vocab is not None and not 0 < vocab <= size:
        raise CliError(f"--vocab {vocab} does not fit the model's embedding of {size} rows",
                       f"pass a vocabulary size between 1 and {size}, or leave --vocab out")
    return torch.randint(0, vocab or size, shape)


def _from_factory(model: nn.Module, inputs: str) -> Example:
    made = _call(load_factory(inputs), inputs)
    if isinstance(made, torch.Tensor):
        return Example(model, (made,))
    if isinstance(made, (tuple, list)):
        return Example(model, tuple(made))
    if isinstance(made, dict):
        return Example(model, (), dict(made))
    raise CliError(f"{inputs}() returned a {type(made).__name__}",
                   "the --inputs factory must return a tensor, a tuple of positional inputs or a dict of keyword inputs")


def _check_runs(ex: Example, target: str) -> None:
    try:
        with torch.no_grad():
            ex.model(*ex.args, **ex.kwargs)
    except Exception as e:  # noqa: BLE001 - reported with the line and what to change
        raise CliError(
            f"{target} fails on inputs {ex.describe()}: {type(e).__name__}: {one_line(e, 200)}{where_raised(e)}",
            "give --input-shape the shape its forward expects (e.g. 2,64 for token ids: batch 2, 64 tokens), "
            "or pass --inputs module:factory",
        ) from e


def _call(factory, name: str):
    try:
        return factory()
    except Exception as e:  # noqa: BLE001
        raise CliError(f"{name}() raised {type(e).__name__}: {one_line(e, 200)}{where_raised(e)}",
                       "TARGET is called with no arguments: name a class or function whose arguments all "
                       "have defaults, or write a small factory function that builds the model") from e


def _import_module(name: str):
    if os.getcwd() not in sys.path:  # like `python -m`: packages in the current directory import
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise CliError(f"no module named {e.name!r}",
                           f"run from the folder that holds the package, install it, or give a file: {TARGET_FORMS}"
                           ) from e
        raise _import_failed(name, e) from e
    except Exception as e:  # noqa: BLE001
        raise _import_failed(name, e) from e


def _import_file(path: str):
    if not os.path.isfile(path):
        raise CliError(f"no such file: {path}", f"TARGET is {TARGET_FORMS}; file paths are relative to "
                       f"the current folder ({os.getcwd()})")
    dotted = _dotted_name(path)
    if dotted is not None:  # inside a package: import it as such, so its own imports work
        return _import_module(dotted)
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in sys.path:  # so that the file can import its neighbours
        sys.path.insert(0, folder)
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        raise _import_failed(path, e) from e
    return module


def _dotted_name(path: str) -> str | None:
    """"pkg.sub.mod" when the file lies in a package under the current folder, else None."""
    rel = os.path.relpath(os.path.abspath(path))
    parts = os.path.splitext(rel)[0].split(os.sep)
    if rel.startswith("..") or len(parts) < 2:
        return None
    packages = [os.path.join(*parts[:i]) for i in range(1, len(parts))]
    if not all(os.path.isfile(os.path.join(p, "__init__.py")) for p in packages):
        return None
    return ".".join(parts)


def _import_failed(name: str, e: Exception) -> CliError:
    return CliError(f"importing {name} raised {type(e).__name__}: {one_line(e, 200)}{where_raised(e)}",
                    "fix that error in the model's code (lasp-fx --debug ... shows the traceback)")


def _what_it_defines(module) -> str:
    names = sorted(n for n, v in vars(module).items()
                   if not n.startswith("_") and isinstance(v, type) and issubclass(v, nn.Module))
    if names:
        return f"models it defines: {', '.join(names[:12])}"
    return f"check the name after the colon; TARGET is {TARGET_FORMS}"
