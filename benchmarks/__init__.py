"""Opt-in benchmark scripts; each prints JSON lines (see `benchmarks.common`)."""
