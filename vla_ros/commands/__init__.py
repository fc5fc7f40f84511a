"""Subcommands of ``vla-ros``: each module has ``add_arguments(parser)`` and ``run(args) -> int``."""
