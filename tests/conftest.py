"""Test set-up: Triton's CPU interpreter when there is no GPU, one thread, float64 references."""

import os

import torch

# Triton reads TRITON_INTERPRET when a kernel is *decorated*, so it must be set before any
# module defining kernels is imported (STACK.md section 5).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
