"""Test models, kernel models and the worker functions that spawned ranks run (importable by name)."""
