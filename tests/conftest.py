"""Test set-up: Triton's CPU interpreter when there is no GPU, one thread, float64 references, and the
`device` every test of capture, detection, rewrite, sharding and the backend runs on."""

import os

import pytest
import torch

# Triton reads TRITON_INTERPRET when a kernel is *decorated*, so it must be set before any
# module defining kernels is imported (docs/design.md §7).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from lasp_fx.distributed.spawn import devices  # noqa: E402 (after TRITON_INTERPRET)

# "cpu", and "cuda" where a GPU is present: on a CPU box the cuda cases are not even collected.
# Multi-rank tests parametrise (device, world_size) with lasp_fx.distributed.spawn.device_worlds.
DEVICES = devices()


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def pytest_configure(config):
    # pytest-xdist's mark, named here too so that a run without xdist (CI) does not warn about it
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker (--dist loadgroup)")
