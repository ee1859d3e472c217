"""ops.triton.launch: what makes two calls share a compiled kernel, and when Triton's own path is kept."""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from lasp_fx.ops.triton import launch  # noqa: E402

X = torch.zeros(64)


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(((X[1:], 7, 0.5), {"G": 1}), id="pointer-not-16B-aligned"),
        pytest.param(((X.half(), 7, 0.5), {"G": 1}), id="dtype"),
        pytest.param(((X, 8, 0.5), {"G": 1}), id="int-value"),
        pytest.param(((X, 7, 0.25), {"G": 1}), id="float-value"),
        pytest.param(((X, 7, 0.5), {"G": 2}), id="constexpr"),
        pytest.param(((X, 7, 0.5), {"G": True}), id="bool-for-int-constexpr"),
        pytest.param(((X, True, 0.5), {"G": 1}), id="bool-for-int"),
    ],
)
def test_a_call_that_triton_could_compile_apart_gets_another_signature(other):
    base = launch.signature((X, 7, 0.5), {"G": 1})
    assert launch.signature(*other) != base


def test_same_dtype_alignment_and_values_share_a_signature():
    y = torch.ones(128)[16:]  # another tensor, another size, still 16-byte aligned
    assert launch.signature((X, 7, 0.5), {"G": 1}) == launch.signature((y, 7, 0.5), {"G": 1})


class _Spy:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((grid, args, kw))


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_anything_but_a_triton_kernel_goes_through_its_own_getitem(monkeypatch, enabled):
    monkeypatch.setattr(launch, "ENABLED", enabled)
    spy = _Spy()
    launch.launch(spy, (3, 1), X, 5, BLOCK=16)
    assert spy.calls == [((3, 1), (X, 5), {"BLOCK": 16})]
    assert not any(key[0] is spy for key in launch._cache)


def test_launch_hooks_take_triton_path_only_when_someone_installed_one():
    from triton import knobs

    assert not launch._hooks_set()  # Triton's default: empty hook chains
    hook = lambda metadata: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        assert launch._hooks_set()
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert not launch._hooks_set()
