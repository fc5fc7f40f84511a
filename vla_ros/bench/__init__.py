"""Benchmarks of ``vla-ros bench``: each prints a table and writes JSON with ``--json``."""
