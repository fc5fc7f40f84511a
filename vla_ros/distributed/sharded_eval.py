"""Evaluation episodes sharded over Ray actors, with lost workers' episodes rerun.

A :class:`ShardedEvaluator` starts ``workers`` actors (one CPU each, placed by Ray on any node of the cluster),
each hosting an :class:`~vla_ros.distributed.episodes.EpisodeRunner` for the checkpoint. A split's episode
indices are cut into chunks and handed to whichever actor is free. When an actor dies (its process or node is
lost), the chunk it was running goes back into the queue and a replacement actor is started: episodes are
rerun, never dropped, and every index is counted exactly once (:func:`~vla_ros.distributed.episodes.summarise`
checks it). Because an episode's outcome depends only on its index and seed, the rerun gives what the lost
run would have.
"""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Callable

from vla_ros.distributed.episodes import EpisodeOutcome, EpisodeRunner, summarise
from vla_ros.distributed.ray_support import import_ray
from vla_ros.policy.evaluate import SplitResult


class WorkersLost(RuntimeError):
    """More actors died than the evaluator may replace."""


class ShardedEvaluator:
    """A pool of Ray actors evaluating one checkpoint (use as a context manager; Ray must be connected).

    ``chunk_size`` episodes go to an actor at a time (default: a quarter of a split's share per worker, so
    that a lost chunk costs little and fast workers take more). ``max_replacements`` bounds the actors
    started to replace dead ones (default: ``workers``). ``on_chunk(evaluator, actor, outcomes)`` is called
    after each finished chunk (progress; tests use it to kill a worker mid-evaluation).
    """

    def __init__(self, checkpoint: str | Path, workers: int, chunk_size: int | None = None,
                 max_replacements: int | None = None, cpus_per_worker: float = 1.0,
                 on_chunk: Callable[["ShardedEvaluator", object, list[EpisodeOutcome]], None] | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.ray = import_ray()
        if not self.ray.is_initialized():
            raise RuntimeError("connect Ray first (vla_ros.distributed.ray_support.ray_session)")
        self.checkpoint = str(Path(checkpoint).resolve())  # workers may run in another folder or on another node
        self.workers = workers
        self.chunk_size = chunk_size
        self.replacements_left = workers if max_replacements is None else max_replacements
        self.on_chunk = on_chunk
        self._actor_class = self.ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(EpisodeRunner)
        self.actors = [self._start_actor() for _ in range(workers)]
        self.lost_workers = 0
        self.rerun_episodes = 0

    def _start_actor(self):
        return self._actor_class.remote(self.checkpoint)

    def __enter__(self) -> "ShardedEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the actors."""
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []

    def run_split(self, split: str, split_kwargs: dict, episodes: int, seed: int, refusal: bool = True,
                  image_scale: float = 1.0, text_scale: float = 1.0) -> SplitResult:
        """Episodes ``0..episodes-1`` of ``split``, spread over the actors; the split's result.

        Arguments after ``seed`` are :meth:`EpisodeRunner.run`'s.
        """
        ray = self.ray
        size = self.chunk_size or max(1, math.ceil(episodes / (4 * self.workers)))
        pending = collections.deque(list(range(start, min(start + size, episodes)))
                                    for start in range(0, episodes, size))
        idle = list(self.actors)
        running: dict[object, tuple[object, list[int]]] = {}  # object ref -> (actor, chunk)
        outcomes: dict[int, EpisodeOutcome] = {}
        while pending or running:
            while pending and idle:
                actor, chunk = idle.pop(), pending.popleft()
                ref = actor.run.remote(split, split_kwargs, chunk, seed, refusal, image_scale, text_scale)
                running[ref] = (actor, chunk)
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, chunk = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                pending.appendleft(chunk)  # the lost chunk runs again, first
                replacement = self._replace(actor, chunk, error)
                if replacement is not None:
                    idle.append(replacement)
                continue
            for outcome in result:
                if outcome.index in outcomes:  # cannot happen unless a chunk ran twice to completion
                    raise RuntimeError(f"{split}: episode {outcome.index} returned twice")
                outcomes[outcome.index] = outcome
            idle.append(actor)
            if self.on_chunk is not None:
                self.on_chunk(self, actor, result)
        return summarise(list(outcomes.values()), episodes)

    def _replace(self, actor, chunk: list[int], error: Exception):
        """Drop a dead actor (its chunk is requeued by the caller); the replacement actor, or None."""
        self.lost_workers += 1
        self.rerun_episodes += len(chunk)
        self.actors = [a for a in self.actors if a is not actor]
        if self.replacements_left <= 0:
            if not self.actors:
                raise WorkersLost(f"every worker died; last error: {error}") from error
            return None
        self.replacements_left -= 1
        replacement = self._start_actor()
        self.actors.append(replacement)
        return replacement
