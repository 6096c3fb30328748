"""The benchmarks: `python -m bench.run` from the repository root (BENCHMARKS.md)."""
