"""``vla-ros bench eval``: evaluation throughput against the number of Ray workers, in one run.

Each row evaluates the same episodes (indices ``0..episodes-1`` of one split, seeded per episode) of the shipped
policy: ``workers=0`` in this process (:class:`~vla_ros.distributed.episodes.EpisodeRunner`), then on 1, 2, ...
Ray actors (:class:`~vla_ros.distributed.sharded_eval.ShardedEvaluator`, a local Ray or ``--ray-address``).
Actors are started and have run one warm-up episode before the clock starts, so the rows compare steady-state
throughput, not start-up. Every row must give the same successes (the episodes are the same); the run fails
otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

from vla_ros.reporting import add_json_argument


def add_arguments(parser) -> None:
    """Options of ``vla-ros bench eval``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts (default: 1 2)")
    parser.add_argument("--episodes", type=int, default=40, help="episodes per row (default: 40)")
    parser.add_argument("--split", default="train", help="instruction split (default: train)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ray-address", help="join this Ray cluster instead of starting a local Ray")
    add_json_argument(parser)


def _row(name: str, workers: int, result, seconds: float) -> dict:
    steps = result.mean_length * result.episodes
    return {"name": name, "workers": workers, "episodes": result.episodes, "successes": result.successes,
            "env_steps": int(round(steps)), "seconds": seconds, "episodes_per_s": result.episodes / seconds,
            "env_steps_per_s": steps / seconds}


def run(args) -> int:
    """Measure in-process and per worker count; print the table; write JSON."""
    import torch

    from vla_ros.distributed.episodes import EpisodeRunner, summarise
    from vla_ros.distributed.ray_support import RayUnavailable, ray_session
    from vla_ros.paths import share_path
    from vla_ros.policy.evaluate import SPLITS
    from vla_ros.reporting import format_table, machine_description, write_json

    torch.set_num_threads(1)
    checkpoint = str(Path(args.checkpoint).resolve() if args.checkpoint else share_path("models", "policy"))
    split_kwargs = SPLITS[args.split]
    runner = EpisodeRunner(checkpoint)
    runner.run(args.split, split_kwargs, [args.episodes], args.seed)  # warm-up: env made, first frames encoded
    start = time.perf_counter()
    local = summarise(runner.run(args.split, split_kwargs, list(range(args.episodes)), args.seed), args.episodes)
    rows = [_row("in_process", 0, local, time.perf_counter() - start)]
    runner.close()
    print(f"in process: {rows[-1]['env_steps_per_s']:.0f} env steps/s", flush=True)
    try:
        with ray_session(args.ray_address) as ray:
            from vla_ros.distributed.sharded_eval import ShardedEvaluator

            for workers in args.workers:
                with ShardedEvaluator(checkpoint, workers) as evaluator:
                    warm = [a.run.remote(args.split, split_kwargs, [args.episodes + i], args.seed)
                            for i, a in enumerate(evaluator.actors)]
                    ray.get(warm)
                    start = time.perf_counter()
                    result = evaluator.run_split(args.split, split_kwargs, args.episodes, args.seed)
                    rows.append(_row(f"ray/workers={workers}", workers, result, time.perf_counter() - start))
                print(f"{workers} Ray workers: {rows[-1]['env_steps_per_s']:.0f} env steps/s", flush=True)
            nodes = len(ray.nodes())
    except RayUnavailable as error:
        print(f"vla-ros bench eval: {error}")
        return 2
    if len({(r["successes"], r["env_steps"]) for r in rows}) != 1:
        raise RuntimeError(f"rows evaluated different episodes: {[(r['name'], r['successes']) for r in rows]}")
    base = next((r for r in rows if r["workers"] == 1), rows[0])
    ratios = {f"workers={r['workers']}/workers={base['workers']}": r["env_steps_per_s"] / base["env_steps_per_s"]
              for r in rows if r is not base}
    print(format_table(rows, ["name", "episodes", "env_steps", "seconds", "episodes_per_s", "env_steps_per_s"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    write_json(args.json, {"machine": machine_description(), "ray_nodes": nodes, "checkpoint": checkpoint,
                           "split": args.split, "rows": rows, "ratios": ratios})
    return 0
