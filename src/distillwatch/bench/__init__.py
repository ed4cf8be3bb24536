"""Benchmarks that back the speed and memory targets (never timed unit tests)."""
