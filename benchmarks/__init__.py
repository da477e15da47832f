"""Benchmark suites (``python -m benchmarks.hw``; later ``python -m exo bench ...``).

Timings live here, never in the pass/fail tests: the machines that run the
tests are noisy and a timing assertion would fail for reasons unrelated to the
code. See docs/performance.md for the figures and how they were produced.
"""
