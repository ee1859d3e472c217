"""Source lines point into the user's or a third party's file, never into torch or lasp_fx."""

import os

import pytest
import torch

import lasp_fx
from lasp_fx.passes.graph import is_library_path

TORCH = os.path.dirname(torch.__file__)
OWN = os.path.dirname(lasp_fx.__file__)


@pytest.mark.parametrize(
    "path, library",
    [
        (os.path.join(TORCH, "nn", "functional.py"), True),
        (os.path.join(OWN, "passes", "graph.py"), True),
        ("<eval_with_key>.3", True),
        (TORCH + "scale" + os.sep + "component" + os.sep + "multiscale_retention.py", False),  # torchscale
        (OWN + "_examples" + os.sep + "model.py", False),
        (os.path.join(os.path.dirname(TORCH), "performer_pytorch", "performer_pytorch.py"), False),
    ],
    ids=["torch", "lasp_fx", "generated", "torchscale-sibling", "lasp_fx-sibling", "performer"],
)
def test_library_paths_are_compared_by_whole_directories(path, library):
    assert is_library_path(path) is library
