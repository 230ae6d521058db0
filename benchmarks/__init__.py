"""Benchmarks: not part of the package, run from the checkout."""
