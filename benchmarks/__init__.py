"""Benchmark scripts and test helpers (a regular package, so that a top-level ``benchmarks`` module
shipped by a dependency, e.g. pysbd, cannot shadow it)."""
