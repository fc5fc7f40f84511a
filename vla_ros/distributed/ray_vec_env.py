"""A stable-baselines3 VecEnv whose simulator envs live in Ray actors, on any node of a cluster.

The learner (SB3 PPO, behaviour cloning and DAgger collection) stays in the driver and sees an ordinary
``VecEnv``: that is the boundary. Each actor hosts a contiguous batch of the envs in an SB3 ``DummyVecEnv``
(rendering and, with ``expert_labels``, the scripted expert run there); one ``step`` sends each actor its slice
of the actions and gathers the slices back in env order. Env ``i`` is seeded ``seed + i`` at its first reset
and auto-resets as in ``DummyVecEnv``, so for the same seed and env count the transitions are the same as
``DummyVecEnv`` / ``SubprocVecEnv`` give, whatever the number of actors. The frozen CLIP stays in the driver
(``ClipFeatureVecEnv`` wraps this), where it encodes all envs' frames in one batch: a 64 px frame is 12 KB, so
shipping frames costs less than a CLIP copy per actor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from vla_ros.distributed.ray_support import ensure_ray


class EnvHost:
    """A batch of envs in one process (a Ray actor): ``DummyVecEnv`` semantics, seeds and options set per call."""

    def __init__(self, env_fns: list[Callable[[], gym.Env]]):
        import torch

        torch.set_num_threads(1)
        self.venv = DummyVecEnv(env_fns)

    def spaces(self) -> tuple[gym.Space, gym.Space]:
        """Observation and action space of the envs."""
        return self.venv.observation_space, self.venv.action_space

    def reset(self, seeds: list[int | None], options: list[dict]):
        """Reset every env (``seeds`` / ``options`` per env, used once); observations and reset infos."""
        self.venv._seeds = list(seeds)  # DummyVecEnv reads these once at its next reset
        self.venv._options = list(options)
        obs = self.venv.reset()
        return obs, list(self.venv.reset_infos)

    def step(self, actions: np.ndarray):
        """One step of every env; auto-reset envs report their terminal observation in ``info``."""
        obs, rewards, dones, infos = self.venv.step(actions)
        return obs, rewards, dones, infos, list(self.venv.reset_infos)

    def call(self, what: str, name: str, indices: list[int], *args, **kwargs):
        """``get_attr`` / ``set_attr`` / ``env_method`` / ``env_is_wrapped`` on this host's envs ``indices``."""
        return getattr(self.venv, what)(name, *args, indices=indices, **kwargs)

    def close(self) -> None:
        """Close the envs."""
        self.venv.close()


def _writable_terminals(infos: list[dict]) -> list[dict]:
    """Infos with their terminal observations copied: arrays from Ray's object store are read-only."""
    for info in infos:
        terminal = info.get("terminal_observation")
        if isinstance(terminal, dict):
            info["terminal_observation"] = {k: np.array(v) for k, v in terminal.items()}
        elif terminal is not None:
            info["terminal_observation"] = np.array(terminal)
    return infos


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)


class RayVecEnv(VecEnv):
    """``len(env_fns)`` envs spread over ``workers`` Ray actors, each hosting a contiguous batch.

    ``workers`` 0: as many actors as the cluster has free CPUs, at most one per env. Connects Ray first if
    needed (a local Ray, or the cluster at ``address``).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], workers: int = 0, address: str | None = None,
                 cpus_per_worker: float = 1.0):
        ray = ensure_ray(address)
        n = len(env_fns)
        if n < 1:
            raise ValueError("RayVecEnv needs at least one env")
        if workers <= 0:
            workers = max(1, int(ray.available_resources().get("CPU", 1) // cpus_per_worker))
        workers = min(workers, n)
        size = math.ceil(n / workers)
        self.slices = [slice(start, min(start + size, n)) for start in range(0, n, size)]
        host = ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(EnvHost)
        self.hosts = [host.remote(list(env_fns[s])) for s in self.slices]
        self.ray = ray
        observation_space, action_space = ray.get(self.hosts[0].spaces.remote())
        super().__init__(n, observation_space, action_space)
        self._actions: np.ndarray | None = None

    @property
    def workers(self) -> int:
        """Number of actors hosting the envs."""
        return len(self.hosts)

    def reset(self):
        """Reset every env (seeds set by :meth:`seed` are used once, as in ``DummyVecEnv``)."""
        refs = [h.reset.remote(self._seeds[s], self._options[s]) for h, s in zip(self.hosts, self.slices)]
        parts = self.ray.get(refs)
        self.reset_infos = [info for _, infos in parts for info in infos]
        self._reset_seeds()
        self._reset_options()
        return _concat([obs for obs, _ in parts])

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions; :meth:`step_wait` sends each actor its slice."""
        self._actions = np.asarray(actions)

    def step_wait(self):
        """Step every env on its actor and gather the results in env order."""
        refs = [h.step.remote(self._actions[s]) for h, s in zip(self.hosts, self.slices)]
        parts = self.ray.get(refs)
        self.reset_infos = [info for *_, reset_infos in parts for info in reset_infos]
        return (_concat([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([p[2] for p in parts]), _writable_terminals([info for p in parts for info in p[3]]))

    def close(self) -> None:
        """Close the envs and stop the actors."""
        if self.hosts:
            try:
                self.ray.get([h.close.remote() for h in self.hosts])
            finally:
                for h in self.hosts:
                    self.ray.kill(h)
                self.hosts = []

    def _call(self, what: str, name: str, indices, *args, **kwargs) -> list:
        wanted = list(range(self.num_envs)) if indices is None else (
            [indices] if isinstance(indices, int) else list(indices))
        refs, order = [], []
        for host, s in zip(self.hosts, self.slices):
            local = [i - s.start for i in wanted if s.start <= i < s.stop]
            if local:
                refs.append(host.call.remote(what, name, local, *args, **kwargs))
                order += [s.start + i for i in local]
        results = [r for part in self.ray.get(refs) for r in part]
        by_index = dict(zip(order, results))
        return [by_index[i] for i in wanted]

    def get_attr(self, attr_name: str, indices=None) -> list:
        """An attribute of each env (``indices``: all by default)."""
        return self._call("get_attr", attr_name, indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        """Set an attribute on each env."""
        self._call("set_attr", attr_name, indices, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        """Call a method of each env."""
        return self._call("env_method", method_name, indices, *method_args, **method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        """Whether each env is wrapped with ``wrapper_class``."""
        return self._call("env_is_wrapped", wrapper_class, indices)
