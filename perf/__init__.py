"""Benchmark harness of mmwal: ``python -m perf.bench`` (see docs/BENCHMARKS.md)."""
