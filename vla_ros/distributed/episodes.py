"""Evaluation episodes addressed by index: the same seed gives the same episode in any process.

``vla-ros eval`` on Ray (:mod:`vla_ros.distributed.sharded_eval`) splits a split's episodes into chunks of
indices. Episode ``k`` of a split always starts from the scene seeded by :func:`episode_seed` and is run
alone (batch size 1, one torch thread), so its outcome does not depend on which worker runs it, on how many
workers there are, or on which other episodes share its chunk: a sharded evaluation returns exactly what
:class:`EpisodeRunner` returns in one process. (The vectorised path, ``vla_ros.policy.evaluate.run_episodes``,
seeds envs rather than episodes and batches them; it draws other scenes, so compare the two only statistically.)

This module never imports Ray: the runner is a plain class that Ray hosts as an actor.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vla_ros.policy.evaluate import SplitResult, _count, _wrong_way, pushed_wrong_way


def episode_seed(seed: int, split: str, index: int) -> int:
    """Scene seed of episode ``index`` of ``split`` in an evaluation seeded ``seed`` (stable across runs)."""
    if index < 0:
        raise ValueError(f"episode index must be >= 0, got {index}")
    state = np.random.SeedSequence([int(seed), zlib.crc32(split.encode()), int(index)]).generate_state(1)
    return int(state[0])


@dataclass(frozen=True)
class EpisodeOutcome:
    """What one evaluation episode gave (``index``: its number within the split)."""

    index: int
    success: bool
    refused: bool
    length: int
    corruption: str | None = None
    word_kind: str | None = None
    wrong_way: bool | None = None
    """push: the target moved >= 4 cm in a wrong direction (None for other tasks)"""

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


def summarise(outcomes: list[EpisodeOutcome], episodes: int) -> SplitResult:
    """The split's :class:`SplitResult` from its outcomes; every index ``0..episodes-1`` exactly once."""
    indices = sorted(o.index for o in outcomes)
    if indices != list(range(episodes)):
        missing = sorted(set(range(episodes)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise RuntimeError(f"episodes not counted exactly once: missing {missing[:10]}, repeated {repeated[:10]}")
    by_corruption: dict[str, tuple[int, int, int]] = {}
    by_word_kind: dict[str, tuple[int, int, int]] = {}
    for o in sorted(outcomes, key=lambda o: o.index):
        _count(by_corruption, o.corruption, int(o.success), int(o.refused))
        _count(by_word_kind, o.word_kind, int(o.success), int(o.refused))
    lengths = [o.length for o in outcomes]
    return SplitResult(sum(o.success for o in outcomes), episodes, float(np.mean(lengths)) if lengths else 0.0,
                       by_corruption, sum(o.refused for o in outcomes), by_word_kind,
                       _wrong_way([o.wrong_way for o in outcomes]))


class EpisodeRunner:
    """Runs evaluation episodes of one policy checkpoint, one at a time.

    ``checkpoint`` is a policy folder (absolute, so that a worker on another node finds it). Envs are made per
    split on first use and kept.
    """

    def __init__(self, checkpoint: str):
        import torch

        torch.set_num_threads(1)  # one core per worker; also keeps float results independent of the layout
        from vla_ros.policy.policy import Policy

        self.policy = Policy.load(Path(checkpoint))
        self.task = self.policy.config["task"]
        self.env_kwargs = dict(self.policy.config.get("env", {}))
        self._venvs: dict[str, object] = {}

    def pid(self) -> int:
        """Process id of this worker (tests kill it to simulate a lost node)."""
        return os.getpid()

    def node_id(self) -> str:
        """Ray node this worker runs on ("" outside Ray)."""
        try:
            import ray

            return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        except ImportError:
            return ""

    def _venv(self, split: str, split_kwargs: dict):
        from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
        from vla_ros.policy.envs import make_vec_env

        split_kwargs = dict(split_kwargs)
        task = split_kwargs.pop("task", self.task)  # one task of a mixed checkpoint, scored on its own
        key = f"{task}/{split}"
        if key not in self._venvs:
            extractor = self.policy.network.features_extractor
            raw = make_vec_env(task, 1, 0, vec_env="dummy", action_chunk=getattr(extractor, "action_chunk", None),
                               **self.env_kwargs, **split_kwargs)
            self._venvs[key] = ClipFeatureVecEnv.for_network(raw, self.policy.network, self.policy.encoder,
                                                             self.policy.normalizer,
                                                             skill_reader=self.policy.command_skill_reader)
        return self._venvs[key]

    def run(self, split: str, split_kwargs: dict, indices: list[int], seed: int, refusal: bool = True,
            image_scale: float = 1.0, text_scale: float = 1.0) -> list[EpisodeOutcome]:
        """Outcomes of episodes ``indices`` of ``split`` (env keyword arguments ``split_kwargs``).

        ``refusal``: the checkpoint's refusal rule holds refused commands still, as ``Policy`` and the node do
        (off: the network acts on every command). ``image_scale`` / ``text_scale`` zero a modality for the
        blind ablations.
        """
        import torch

        from vla_ros.policy.action_chunk import ENV_STEPS
        from vla_ros.policy.evaluate import _refused

        venv = self._venv(split, split_kwargs)
        rule = self.policy.refusal_rule if refusal else None
        network = self.policy.network
        extractor = network.features_extractor
        saved = (extractor.image_scale.clone(), extractor.text_scale.clone())
        extractor.image_scale.fill_(image_scale)
        extractor.text_scale.fill_(text_scale)
        outcomes = []
        try:
            with torch.no_grad():
                for index in indices:
                    venv.seed(episode_seed(seed, split, index))
                    obs = venv.reset()
                    holding = bool(_refused(rule, self.policy.encoder, obs, np.arange(1), venv.commands)[0])
                    length = 0
                    while True:
                        actions, _ = network.predict(obs, deterministic=True)
                        if holding:  # a refused command: hold still to the time limit
                            actions = np.zeros_like(actions)
                        obs, _, dones, infos = venv.step(actions)
                        length += int(infos[0].get(ENV_STEPS, 1))  # a chunk's decision runs several steps
                        if dones[0]:
                            info = infos[0]
                            outcomes.append(EpisodeOutcome(
                                int(index), bool(info.get("is_success", False)), holding, length,
                                info.get("corruption"), info.get("word_kind"), pushed_wrong_way(info)))
                            break
        finally:
            extractor.image_scale.copy_(saved[0])
            extractor.text_scale.copy_(saved[1])
        return outcomes

    def close(self) -> None:
        """Close the envs."""
        for venv in self._venvs.values():
            venv.close()
        self._venvs.clear()
