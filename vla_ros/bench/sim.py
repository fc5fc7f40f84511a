"""``vla-ros bench sim``: simulator env steps/s, physics only and with rendering, single and vectorised.

Each row times ``env.step`` with random actions (resets happen outside the timed region; the
vectorised env autoresets inside it). ``per_s`` is env steps per second summed over workers.
"""

from __future__ import annotations

import functools
import os
import time

import numpy as np

from vla_ros.reporting import add_json_argument, format_table, machine_description, write_json

COLUMNS = ("name", "device", "image", "envs", "p50_ms", "p99_ms", "per_s")


def add_arguments(parser) -> None:
    """Options of ``vla-ros bench sim``."""
    parser.add_argument("--task", choices=("reach", "push"), default="reach")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per row (default 400)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128], help="rendered image sizes")
    parser.add_argument("--workers", type=int, default=2, help="vectorised env workers (0: skip)")
    parser.add_argument("--gl", choices=("egl", "osmesa"), default=None,
                        help="offscreen GL backend (default: $MUJOCO_GL or egl)")
    add_json_argument(parser)


def _summary(name: str, durations: list[float], envs: int, image: int | str) -> dict:
    ms = np.asarray(durations) * 1e3
    return {"name": name, "device": "cpu", "image": image, "envs": envs,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "per_s": float(envs * len(ms) / (ms.sum() / 1e3)), "steps": len(ms)}


def _time_single(env_id: str, steps: int, image_size: int, render: bool) -> list[float]:
    import gymnasium as gym

    env = gym.make(env_id, image_size=image_size, render_observation=render)
    try:
        env.action_space.seed(0)
        env.reset(seed=0)
        env.step(env.action_space.sample())  # warm-up: creates the renderer
        durations = []
        for _ in range(steps):
            action = env.action_space.sample()
            start = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            durations.append(time.perf_counter() - start)
            if terminated or truncated:
                env.reset()
    finally:
        env.close()
    return durations


def _time_vector(env_id: str, steps: int, image_size: int, render: bool, workers: int) -> list[float]:
    import gymnasium as gym

    # "module:id" makes each spawned worker import vla_ros.envs (which registers the ids).
    make = functools.partial(gym.make, f"vla_ros.envs:{env_id}", image_size=image_size,
                             render_observation=render)
    # spawn, not fork: a forked child must not inherit the parent's GL state.
    envs = gym.vector.AsyncVectorEnv([make] * workers, context="spawn")
    try:
        envs.action_space.seed(0)
        envs.reset(seed=0)
        envs.step(envs.action_space.sample())
        durations = []
        for _ in range(steps):
            action = envs.action_space.sample()
            start = time.perf_counter()
            envs.step(action)
            durations.append(time.perf_counter() - start)
    finally:
        envs.close()
    return durations


def run(args) -> int:
    """Run the benchmark, print the table, write JSON when ``--json`` is given."""
    if args.gl:
        os.environ["MUJOCO_GL"] = args.gl
        os.environ["PYOPENGL_PLATFORM"] = args.gl
    from vla_ros.envs import ENV_IDS

    env_id = ENV_IDS[args.task]
    smallest = min(args.sizes)
    rows = [_summary("physics", _time_single(env_id, args.steps, smallest, False), 1, "-")]
    for size in args.sizes:
        rows.append(_summary(f"render_{size}", _time_single(env_id, args.steps, size, True), 1, size))
    if args.workers > 0:
        workers = args.workers
        rows.append(_summary(f"vec{workers}_physics",
                             _time_vector(env_id, args.steps, smallest, False, workers), workers, "-"))
        rows.append(_summary(f"vec{workers}_render_{smallest}",
                             _time_vector(env_id, args.steps, smallest, True, workers), workers, smallest))
    by_name = {row["name"]: row["per_s"] for row in rows}
    ratios = {f"render_{size}/physics": by_name[f"render_{size}"] / by_name["physics"] for size in args.sizes}
    if args.workers > 0:
        vec = f"vec{args.workers}_render_{smallest}"
        ratios[f"{vec}/render_{smallest}"] = by_name[vec] / by_name[f"render_{smallest}"]
    print(f"vla-ros bench sim: {env_id}, {args.steps} steps per row, MUJOCO_GL={os.environ.get('MUJOCO_GL')}")
    print(format_table(rows, COLUMNS))
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    write_json(args.json, {"machine": machine_description(), "env": env_id,
                           "mujoco_gl": os.environ.get("MUJOCO_GL"), "rows": rows, "ratios": ratios})
    return 0
