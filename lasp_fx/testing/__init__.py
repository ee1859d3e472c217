"""Helpers shared by the tests and benchmarks: numeric comparisons and random inputs."""
