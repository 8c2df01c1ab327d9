"""Benchmarks for async_accept: ``python -m benchmarks`` (see README.md here).

Benchmarks are not tests: nothing here asserts a timing.
"""
