"""``vla-ros train``: imitation warm start + PPO in the simulator, resumable (rerun the same command).

The shipped policy, from its recipe (flags given as well override it)::

    vla-ros train --config models/policy/recipe.yaml --out runs/policy
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    """Options: every field of ``TrainConfig``."""
    from vla_ros.commands.dataclass_args import add_dataclass_arguments
    from vla_ros.policy.train import TrainConfig

    add_dataclass_arguments(parser, TrainConfig, skip=("command",))


def run(args) -> int:
    """Train (or resume the run in ``--out``) and export ``out/final``."""
    from vla_ros.commands.dataclass_args import dataclass_from_args
    from vla_ros.policy.train import TrainConfig, TrainingRun, command_line

    try:
        cfg = dataclass_from_args(TrainConfig, args, skip=("command",), command=command_line())
    except ValueError as error:
        raise SystemExit(f"vla-ros train: {error}") from None
    final = TrainingRun(cfg).run()
    print(f"checkpoint written to {final}")
    return 0
