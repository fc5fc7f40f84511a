"""Success rates of a policy per task and instruction split, with 95% confidence intervals.

Episodes are spread evenly over the vectorised envs and each env runs a fixed quota, so short
(successful) episodes are not over-counted. Episode seeds follow from ``seed``: the same seed and
env count give the same scenes and commands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
from vla_ros.policy.envs import make_vec_env

# split name in reports -> env keyword arguments
SPLITS = {
    "train": {"split": "train"},
    "heldout_combos": {"split": "heldout_combos"},
    "heldout_phrasings": {"split": "heldout_phrasings"},
    "distractors": {"split": "train", "perturbation": "distractors"},
    "jitter": {"split": "train", "perturbation": "jitter"},
    "corrupted": {"split": "train", "perturbation": "corrupted"},
}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class SplitResult:
    """Outcome of one evaluation run."""

    successes: int
    episodes: int
    mean_length: float
    by_corruption: dict[str, tuple[int, int]] = field(default_factory=dict)
    """(successes, episodes) per kind of corrupted command (``info["corruption"]``); empty for clean splits"""

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes."""
        return self.successes / max(1, self.episodes)

    def report(self) -> dict:
        """The per-split entry of the ``vla-ros eval`` JSON report."""
        lo, hi = wilson_interval(self.successes, self.episodes)
        entry = {"success_rate": self.success_rate, "ci95": [lo, hi], "episodes": self.episodes,
                 "mean_length": self.mean_length}
        if self.by_corruption:  # an absent object's name and a random string fail differently
            entry["by_corruption"] = {
                kind: {"success_rate": wins / n, "ci95": list(wilson_interval(wins, n)), "episodes": n}
                for kind, (wins, n) in sorted(self.by_corruption.items())}
        return entry


@torch.no_grad()
def run_episodes(network, encoder, normalizer, task: str, episodes: int, seed: int, num_envs: int = 2,
                 vec_env: str = "subproc", image_scale: float = 1.0, text_scale: float = 1.0,
                 **env_kwargs) -> SplitResult:
    """Run ``episodes`` deterministic episodes of ``network`` and count ``info["is_success"]``."""
    num_envs = max(1, min(num_envs, episodes))
    quotas = np.full(num_envs, episodes // num_envs)
    quotas[: episodes % num_envs] += 1
    extractor = network.features_extractor
    venv = ClipFeatureVecEnv(make_vec_env(task, num_envs, seed, vec_env=vec_env, **env_kwargs),
                             encoder, normalizer, reference_frame=getattr(extractor, "reference_frame", False))
    saved = (extractor.image_scale.clone(), extractor.text_scale.clone())
    extractor.image_scale.fill_(image_scale)
    extractor.text_scale.fill_(text_scale)
    try:
        obs = venv.reset()
        done_counts = np.zeros(num_envs, dtype=int)
        successes, lengths = 0, []
        by_corruption: dict[str, tuple[int, int]] = {}
        steps = np.zeros(num_envs, dtype=int)
        while np.any(done_counts < quotas):
            actions, _ = network.predict(obs, deterministic=True)
            obs, _, dones, infos = venv.step(actions)
            steps += 1
            for i in np.flatnonzero(dones):
                if done_counts[i] < quotas[i]:
                    success = int(bool(infos[i].get("is_success", False)))
                    successes += success
                    lengths.append(int(steps[i]))
                    done_counts[i] += 1
                    kind = infos[i].get("corruption")
                    if kind is not None:
                        wins, n = by_corruption.get(kind, (0, 0))
                        by_corruption[kind] = (wins + success, n + 1)
                steps[i] = 0
    finally:
        extractor.image_scale.copy_(saved[0])
        extractor.text_scale.copy_(saved[1])
        venv.close()
    return SplitResult(successes, int(quotas.sum()), float(np.mean(lengths)) if lengths else 0.0, by_corruption)
