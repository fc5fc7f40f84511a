"""``vla-ros``: the package's one command-line entry point.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``vla-ros --help`` stays fast and a
subcommand's heavy dependencies (torch, mujoco, rclpy) load only when needed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("vla_ros.commands.demo", "closed-loop demo: simulator + ROS nodes + shipped checkpoints"),
    "train-clip": ("vla_ros.commands.train_clip", "train or adapt the sim-domain CLIP"),
    "eval-clip": ("vla_ros.commands.eval_clip", "zero-shot grounding accuracy and retrieval of a CLIP"),
    "train": ("vla_ros.commands.train", "train the PPO policy in the simulator"),
    "eval-expert": ("vla_ros.commands.eval_expert", "success rate of the scripted expert per task on a robot"),
    "eval": ("vla_ros.commands.evaluate", "success rates of a policy checkpoint per task and split"),
    "calibrate-refusal": ("vla_ros.commands.calibrate_refusal",
                          "choose and store a policy's refusal threshold on validation scenes"),
    "train-done": ("vla_ros.commands.train_done", "fit and store a policy's learned done signal"),
    "export": ("vla_ros.commands.export", "export the inference graph to ONNX with parity checks"),
    "sweep": ("vla_ros.commands.sweep", "Ray Tune sweep over seeds and hyperparameters of a training recipe"),
    "figures": ("vla_ros.commands.figures", "the README figures table from the shipped reports (--check, --write)"),
}
BENCHMARKS: dict[str, tuple[str, str]] = {
    "sim": ("vla_ros.bench.sim", "simulator steps/s with and without rendering"),
    "clip": ("vla_ros.bench.clip", "CLIP encoder images/s and latency per batch size"),
    "train": ("vla_ros.bench.train", "training throughput, batched vs per-env encoding, and per Ray worker count"),
    "eval": ("vla_ros.bench.eval", "evaluation throughput in process and per Ray worker count"),
    "ros": ("vla_ros.bench.ros", "end-to-end ROS latency, image publish to joint command"),
    "latency": ("vla_ros.bench.latency", "frame -> action latency per inference backend"),
    "executor": ("vla_ros.bench.executor", "rclpy callback dispatch rate, single- vs multi-threaded executor"),
}


def _add_module_parser(subparsers, name: str, module: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        parser.set_defaults(_missing=module)
        return
    mod.add_arguments(parser)
    parser.set_defaults(_run=mod.run)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand (modules imported to add their options)."""
    parser = argparse.ArgumentParser(prog="vla-ros", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        _add_module_parser(sub, name, module, help_text)
    bench = sub.add_parser("bench", help="benchmarks: print a table and write JSON")
    bench_sub = bench.add_subparsers(dest="what", required=True, metavar="WHAT")
    for name, (module, help_text) in BENCHMARKS.items():
        _add_module_parser(bench_sub, name, module, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``vla-ros`` with ``argv`` (default: the process arguments); return the exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"vla-ros: this subcommand is not available in this build ({args._missing} missing)",
              file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
