"""Benchmarks: run with `python -m tools.bench.NAME`; not part of the test suite."""
