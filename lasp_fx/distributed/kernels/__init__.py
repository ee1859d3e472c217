"""Triton kernels of the state exchanges: the all-gather's combination and the peer-memory push."""
