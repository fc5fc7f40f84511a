"""Research probes: one-off measurements behind ``docs/benchmarks/README.md``; not part of the installed package.

Each module runs as ``python -m research.<name> --help``; see ``research/README.md``.
"""
