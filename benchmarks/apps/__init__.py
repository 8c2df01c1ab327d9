"""Benchmark apps, one module serving every variant (chosen by environment)."""
