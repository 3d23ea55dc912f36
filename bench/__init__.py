"""Benchmarks run inside the lab VM by `make bench` (ratios in one run, never timed tests)."""
