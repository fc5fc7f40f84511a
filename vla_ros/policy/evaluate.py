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

from vla_ros.policy.action_chunk import ENV_STEPS
from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
from vla_ros.policy.envs import make_vec_env

# split name in reports -> env keyword arguments
SPLITS = {
    "train": {"split": "train"},
    "heldout_combos": {"split": "heldout_combos"},
    "heldout_phrasings": {"split": "heldout_phrasings"},
    "heldout_words": {"split": "heldout_words"},
    "validation_words": {"split": "validation_words"},
    "distractors": {"split": "train", "perturbation": "distractors"},
    "jitter": {"split": "train", "perturbation": "jitter"},
    "corrupted": {"split": "train", "perturbation": "corrupted"},
}


WRONG_WAY_DISTANCE = 0.04  # m the target must move for a push to count as one in a wrong direction
WRONG_WAY_COSINE = math.cos(math.radians(45))


def pushed_wrong_way(info: dict) -> bool | None:
    """Whether a push episode's last ``info`` shows the target moved >= 4 cm more than 45 degrees off the command.

    Pushing the right object the wrong way (the direction misread) is a different failure from not pushing it
    far enough; ``vla-ros eval`` reports its rate for push. Reads the env's privileged state (target position,
    its start, the commanded direction; :meth:`TabletopEnv._info`); None for an episode that is not a push.
    """
    if info.get("task") != "push" or "privileged" not in info:
        return None
    privileged = np.asarray(info["privileged"], dtype=np.float64)
    moved = privileged[3:5] - privileged[6:8]
    distance = float(np.linalg.norm(moved))
    return distance >= WRONG_WAY_DISTANCE and float(moved @ privileged[9:11]) < WRONG_WAY_COSINE * distance


def _wrong_way(outcomes: list[bool | None]) -> int | None:
    """Pushes in a wrong direction among episode outcomes of :func:`pushed_wrong_way`; None without a push."""
    pushes = [o for o in outcomes if o is not None]
    return sum(pushes) if pushes else None


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
    """Outcome of one evaluation run.

    ``by_corruption`` and ``by_word_kind`` map a kind (``info["corruption"]``, ``info["word_kind"]``) to
    (successes, episodes, refused); both are empty where the split has no such kinds.
    """

    successes: int
    episodes: int
    mean_length: float
    by_corruption: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    refused: int = 0
    """episodes whose command the policy refused (it held still): false refusals on a valid split, correct
    ones on ``corrupted``"""
    by_word_kind: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    wrong_way: int | None = None
    """push: episodes that moved the target >= 4 cm in a wrong direction (:func:`pushed_wrong_way`); None when
    no episode was a push"""
    by_task: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """(successes, episodes, refused) per ``info["task"]``: a mixed env's reach and push episodes apart"""

    def task_success_rate(self, task: str) -> float | None:
        """Success rate of one task's episodes; None when none ran."""
        wins, n, _ = self.by_task.get(task, (0, 0, 0))
        return wins / n if n else None

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes."""
        return self.successes / max(1, self.episodes)

    @property
    def refusal_rate(self) -> float:
        """Fraction of episodes refused."""
        return self.refused / max(1, self.episodes)

    def report(self) -> dict:
        """The per-split entry of the ``vla-ros eval`` JSON report."""
        lo, hi = wilson_interval(self.successes, self.episodes)
        entry = {"success_rate": self.success_rate, "ci95": [lo, hi], "episodes": self.episodes,
                 "mean_length": self.mean_length, "refusal_rate": self.refusal_rate,
                 "refusal_ci95": list(wilson_interval(self.refused, self.episodes))}
        if self.wrong_way is not None:
            entry["wrong_direction_rate"] = self.wrong_way / max(1, self.episodes)
        for key, kinds in (("by_corruption", self.by_corruption), ("by_word_kind", self.by_word_kind)):
            if kinds:  # an absent object's name and a random string fail differently; so do new words
                entry[key] = {kind: {"success_rate": wins / n, "ci95": list(wilson_interval(wins, n)),
                                     "refusal_rate": refused / n, "episodes": n}
                              for kind, (wins, n, refused) in sorted(kinds.items())}
        return entry


def _count(table: dict[str, tuple[int, int, int]], kind: str | None, success: int, refused: int) -> None:
    if kind is not None:
        wins, n, held = table.get(kind, (0, 0, 0))
        table[kind] = (wins + success, n + 1, held + refused)


def _refused(rule, encoder, obs: dict, envs: np.ndarray, commands: list[str]) -> np.ndarray:
    """Which of ``envs`` start an episode whose command (``commands[env]``) the rule refuses."""
    from vla_ros.keys import FEAT_IMAGE_PATCHES, FEAT_TEXT

    if rule is None or len(envs) == 0:
        return np.zeros(len(envs), dtype=bool)
    refusals = rule.refusals(encoder, torch.as_tensor(obs[FEAT_IMAGE_PATCHES][envs]),
                             torch.as_tensor(obs[FEAT_TEXT][envs]), [commands[i] for i in envs])
    return np.array([r is not None for r in refusals], dtype=bool)


@torch.no_grad()
def run_episodes(network, encoder, normalizer, task: str, episodes: int, seed: int, num_envs: int = 2,
                 vec_env: str = "subproc", image_scale: float = 1.0, text_scale: float = 1.0, refusal=None,
                 progress: bool = False, **env_kwargs) -> SplitResult:
    """Run ``episodes`` deterministic episodes of ``network`` and count ``info["is_success"]``.

    With a :class:`vla_ros.grounding.refusal.RefusalRule` an episode whose command it refuses on the first
    frame is held still to its time limit (zero action: the arm stays where it is), as ``Policy`` and the node
    do. ``progress`` shows a progress bar.
    """
    num_envs = max(1, min(num_envs, episodes))
    quotas = np.full(num_envs, episodes // num_envs)
    quotas[: episodes % num_envs] += 1
    extractor = network.features_extractor
    venv = ClipFeatureVecEnv.for_network(make_vec_env(task, num_envs, seed, vec_env=vec_env,
                                                      action_chunk=getattr(extractor, "action_chunk", None),
                                                      **env_kwargs),
                                         network, encoder, normalizer)
    saved = (extractor.image_scale.clone(), extractor.text_scale.clone())
    extractor.image_scale.fill_(image_scale)
    extractor.text_scale.fill_(text_scale)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=int(quotas.sum()), desc=env_kwargs.get("split", "eval"), unit="ep", leave=False,
                   dynamic_ncols=True)
    try:
        obs = venv.reset()
        holding = _refused(refusal, encoder, obs, np.arange(num_envs), venv.commands)
        done_counts = np.zeros(num_envs, dtype=int)
        successes, refused, lengths, pushes = 0, 0, [], []
        by_corruption: dict[str, tuple[int, int, int]] = {}
        by_word_kind: dict[str, tuple[int, int, int]] = {}
        by_task: dict[str, tuple[int, int, int]] = {}
        steps = np.zeros(num_envs, dtype=int)
        while np.any(done_counts < quotas):
            actions, _ = network.predict(obs, deterministic=True)
            actions = np.where(holding[:, None], 0.0, actions)  # a refused command: hold still
            obs, _, dones, infos = venv.step(actions)
            steps += [int(info.get(ENV_STEPS, 1)) for info in infos]  # a chunked policy's decision runs several
            finished = np.flatnonzero(dones)
            for i in finished:
                if done_counts[i] < quotas[i]:
                    success = int(bool(infos[i].get("is_success", False)))
                    successes += success
                    refused += int(holding[i])
                    lengths.append(int(steps[i]))
                    pushes.append(pushed_wrong_way(infos[i]))
                    done_counts[i] += 1
                    _count(by_corruption, infos[i].get("corruption"), success, int(holding[i]))
                    _count(by_word_kind, infos[i].get("word_kind"), success, int(holding[i]))
                    _count(by_task, infos[i].get("task"), success, int(holding[i]))
                    if bar is not None:
                        bar.update(1)
                steps[i] = 0
            holding[finished] = _refused(refusal, encoder, obs, finished, venv.commands)
    finally:
        if bar is not None:
            bar.close()
        extractor.image_scale.copy_(saved[0])
        extractor.text_scale.copy_(saved[1])
        venv.close()
    return SplitResult(successes, int(quotas.sum()), float(np.mean(lengths)) if lengths else 0.0, by_corruption,
                       refused, by_word_kind, _wrong_way(pushes), by_task)
