"""``vla-ros sweep``: Ray Tune over a training recipe, seeds x chosen hyperparameters, the best trial exported.

Every trial is a resumable ``vla-ros train`` run folder in ``OUT/trials``; rerun the same command to resume
an interrupted sweep. Early stopping (ASHA) and the choice of the best trial read validation success on
training combos, validation scenes, never evaluation scenes. The best checkpoint, its recipe and model card
go to ``OUT/best``; the per-trial summary to ``OUT/sweep.json``; Ray Tune's own logs to ``OUT/tune``::

    vla-ros sweep --config models/policy/recipe.yaml --seeds 0 1 --grid learning_rate=5e-5,1e-4 --out runs/sweep

Without ``--ray-address`` a local Ray starts on this machine; with it the trials run on that cluster (every
node must see ``--out`` and the CLIP folder at the same absolute paths). Ray is an optional extra.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser) -> None:
    """Options: the recipe, seeds, grid, overrides, where to run and early stopping."""
    from vla_ros.reporting import add_json_argument

    parser.add_argument("--config", metavar="FILE", default=None,
                        help="base recipe (YAML, as for `vla-ros train --config`), e.g. models/policy/recipe.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                        help="one trial per seed and grid combination (default: 0)")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="a `vla-ros train` setting and the values to try (repeatable: the product is swept; "
                        "a list setting such as net_arch as space-separated numbers: 'net_arch=64 64,256 256')")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting fixed for every trial, over the recipe (repeatable; e.g. ppo_steps=64)")
    parser.add_argument("--clip", default=None, help="CLIP checkpoint folder (same as --set clip=PATH)")
    parser.add_argument("--out", default="runs/sweep", help="sweep folder: trials/, best/, sweep.json, tune/")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join this Ray cluster (host:port or auto); default: start a local Ray here")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray (default: this machine's cores); ignored with --ray-address")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0,
                        help="CPUs each trial reserves (default 1; with --set vec_env=subproc reserve num_envs + 1)")
    parser.add_argument("--max-concurrent", type=int, default=None, help="at most this many trials at once")
    parser.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=True,
                        help="ASHA early stopping on validation success (default: on)")
    parser.add_argument("--grace-period", type=int, default=2,
                        help="evaluations a trial makes before it may be stopped early (default 2)")
    parser.add_argument("--max-failures", type=int, default=0,
                        help="retries of a failed trial (it resumes from its run folder; default 0)")
    add_json_argument(parser)


def run(args) -> int:
    """Run the sweep on an embedded or joined Ray; print the trial table; exit 1 when no trial finished."""
    from vla_ros.distributed.ray_support import RAY_REQUIREMENTS, RayUnavailable, import_ray, ray_session
    from vla_ros.distributed.sweep import build_spec, parse_assignments
    from vla_ros.reporting import format_table, write_json

    try:
        overrides = parse_assignments(args.overrides, many=False)
        if args.clip is not None:
            overrides["clip"] = args.clip
        spec = build_spec(args.config, args.seeds, parse_assignments(args.grid, many=True), overrides)
        if args.grace_period < 1:
            raise ValueError("--grace-period must be at least 1")
    except ValueError as error:
        print(f"vla-ros sweep: {error}", file=sys.stderr)
        return 2
    try:
        import_ray()
        from ray import tune  # noqa: F401  (the [tune] extra)
    except (RayUnavailable, ImportError):
        print(f"vla-ros sweep: needs the optional Ray extra: .venv/bin/python -m pip install -r {RAY_REQUIREMENTS} "
              "(scripts/setup.sh installs it); without Ray, train each setting with `vla-ros train`",
              file=sys.stderr)
        return 2
    from vla_ros.distributed.sweep import run_sweep
    from vla_ros.policy.train import command_line

    with ray_session(args.ray_address, args.num_cpus):
        report = run_sweep(spec, args.out, cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent,
                           early_stopping=args.early_stopping, grace_period=args.grace_period,
                           max_failures=args.max_failures, command=command_line())
    names = list(spec.grid) + ["seed"]
    rows = [{"trial": s["index"], **{n: s["settings"][n] for n in names}, "evaluations": s["evaluations"],
             "validation_success": "-" if s["validation_success"] is None else s["validation_success"],
             "status": s["status"]} for s in report["trials"]]
    print(format_table(rows, ["trial", *names, "evaluations", "validation_success", "status"]))
    if report["best"]:
        print(f"best: {report['best']} (validation success on training combos, validation scenes); "
              f"checkpoint, recipe and model card in {report['best_checkpoint']}")
    else:
        print("no trial finished: nothing exported", file=sys.stderr)
    write_json(args.json, report)
    return 0 if report["best"] else 1
