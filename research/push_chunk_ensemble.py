"""Whether ACT's temporal ensembling of overlapping action chunks carries a chunked policy's pushes further.

Usage: ``python -m research.push_chunk_ensemble CHECKPOINT [--every 1] [--decay 0.1] [--episodes 100]
[--seed 6000000] [--json FILE]``

A chunked checkpoint (K actions predicted per decision) decides every ``--every`` frames instead of every E it
was trained with (``chunk_execute``); each frame's action is the mean of every earlier plan's prediction for that
frame, weighted ``exp(-decay * i)`` with i = 0 the oldest (ACT, Zhao et al. 2023). A bad decision, such as one
taken on a frame where the estimate jumps as the fingertip covers the object, is then outvoted by the plans made
before it. Scored as :mod:`research.push_failures` does, on push scenes of the training split from seed 6,000,000.
"""

from __future__ import annotations

import argparse

import numpy as np


class TemporalEnsemble:
    """The plans of one episode and the ensembled action of each frame."""

    def __init__(self, predicted: int, action_dim: int, every: int, decay: float):
        if not 1 <= every <= predicted:
            raise ValueError(f"--every must be within 1..{predicted} (the chunk), got {every}")
        self.predicted, self.action_dim, self.every, self.decay = predicted, action_dim, every, float(decay)
        self.reset()

    def reset(self) -> None:
        """A new episode: no plans, frame 0."""
        self.plans: list[tuple[int, np.ndarray]] = []
        self.frame = 0

    @property
    def decides(self) -> bool:
        """Whether this frame takes a new plan."""
        return self.frame % self.every == 0

    def add(self, action: np.ndarray) -> None:
        """Add the current frame's plan, a flat (K * n,) network action."""
        self.plans.append((self.frame, np.asarray(action, dtype=np.float64).reshape(self.predicted,
                                                                                   self.action_dim)))
        self.plans = [(start, plan) for start, plan in self.plans if self.frame - start < self.predicted]

    def action(self) -> np.ndarray:
        """The current frame's ensembled action (oldest plan first); moves on to the next frame."""
        predictions = [plan[self.frame - start] for start, plan in self.plans if 0 <= self.frame - start]
        if not predictions:
            raise RuntimeError("no plan covers this frame: add one first")
        weights = np.exp(-self.decay * np.arange(len(predictions)))
        self.frame += 1
        return np.clip(np.tensordot(weights, np.stack(predictions), axes=1) / weights.sum(), -1.0, 1.0)


def main(argv=None) -> dict:
    """Run the episodes; print the outcome table and return the report."""
    import gymnasium as gym
    import torch

    import vla_ros.envs  # noqa: F401  (registers the envs)
    from research.push_failures import PROBE_SEED, by_direction, run_episodes, summarise
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_chunk_ensemble",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a chunked policy checkpoint (action_chunk > 1)")
    parser.add_argument("--every", type=int, default=1, help="frames between decisions (default 1)")
    parser.add_argument("--decay", type=float, default=0.1, help="ACT's m: weight exp(-m * i), i = 0 the oldest")
    parser.add_argument("--episodes", type=int, default=100, help="push episodes (default 100)")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help=f"first scene seed (default {PROBE_SEED})")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    if policy.action_chunk.single:
        raise SystemExit(f"{args.checkpoint}: not a chunked policy")
    ensemble = TemporalEnsemble(policy.action_chunk.predicted, len(policy.joint_names), args.every, args.decay)
    env = gym.make("vla_ros/Push-v0", **policy.config.get("env", {}))

    def act(obs, info):
        if ensemble.decides:
            ensemble.add(policy.decide(obs["image"], info["command"], obs["proprio"]))
        return ensemble.action()

    def reset() -> None:
        policy.reset()
        ensemble.reset()

    episodes = run_episodes(env, act, args.seed, args.episodes, reset)
    rows = summarise(episodes)
    print(format_table(rows, list(rows[0])))
    report = {"checkpoint": str(args.checkpoint), "every": args.every, "decay": args.decay,
              "episodes": args.episodes, "seed": args.seed, "rows": rows, "by_direction": by_direction(episodes),
              "per_episode": episodes}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
