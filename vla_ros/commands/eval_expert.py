"""``vla-ros eval-expert``: success rate of the scripted expert per task on a robot, with 95% intervals.

The expert reads privileged simulator state and solves the tasks by inverse kinematics on the robot's URDF
(:mod:`vla_ros.envs.expert`), so it is what imitation learning can at best copy on that robot: a robot file
whose expert fails (workspace out of reach, a home pose in the way) cannot be trained on.

Report (``--json``): ``{"robot", "episodes", "seed", "tasks": {"<task>": {"success_rate", "ci95", "episodes",
"median_length"}}}``.
"""

from __future__ import annotations

from vla_ros.reporting import add_json_argument


def add_arguments(parser) -> None:
    """Options of ``vla-ros eval-expert``."""
    parser.add_argument("--robot", default="", help="robot file: a name in sim/robots or a path (default: vla_arm)")
    parser.add_argument("--tasks", nargs="+", default=["reach", "push"], choices=["reach", "push"])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per task (default: 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first episode (default: 1)")
    add_json_argument(parser)


def run(args) -> int:
    """Run the expert; print the table; write JSON."""
    import gymnasium as gym
    import numpy as np

    import vla_ros.envs  # noqa: F401  (registers the ids; chooses the GL backend before MuJoCo renders)
    from vla_ros.envs.expert import ScriptedExpert
    from vla_ros.policy.envs import env_id
    from vla_ros.policy.evaluate import wilson_interval
    from vla_ros.reporting import format_table, write_json
    from vla_ros.robot_config import robot_name

    tasks = {}
    for task in args.tasks:
        env = gym.make(env_id(task), robot=args.robot or None, render_observation=False)
        expert = ScriptedExpert(env)
        wins, lengths = 0, []
        try:
            for k in range(args.episodes):
                _, info = env.reset(seed=args.seed + k)
                steps, done = 0, False
                while not done:
                    _, _, terminated, truncated, info = env.step(expert.act(info))
                    steps += 1
                    done = terminated or truncated
                wins += int(bool(info["is_success"]))
                lengths.append(steps)
        finally:
            env.close()
        tasks[task] = {"success_rate": wins / args.episodes, "ci95": list(wilson_interval(wins, args.episodes)),
                       "episodes": args.episodes, "median_length": float(np.median(lengths))}
    name = robot_name(args.robot or None)
    print(format_table([{"robot": name, "task": t, **v} for t, v in tasks.items()],
                       ["robot", "task", "success_rate", "ci95", "episodes", "median_length"]))
    write_json(args.json, {"robot": name, "episodes": args.episodes, "seed": args.seed, "tasks": tasks})
    return 0
