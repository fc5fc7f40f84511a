"""Vectorised simulator envs for training and evaluation (one process per env, or in-process)."""

from __future__ import annotations

import os
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from vla_ros.envs import ENV_IDS
from vla_ros.envs.instructions import TASKS

EXPERT_ACTION = "expert_action"
EXPERT_PHASE = "expert_phase"  # the waypoint the expert heads for (analysis only: ScriptedExpert.act_with_phase)
TARGET_XY = "target_xy"  # commanded object's image position, (x, y) in [-1, 1] (training signal only)
# info key of a chunked step with label_every_step: the states passed inside the chunk, each a dict of its raw
# observation ("obs"), EXPERT_ACTION and TARGET_XY (ClipFeatureVecEnv replaces the observations by features)
CHUNK_STEPS = "chunk_steps"


def checkpoint_tasks(task: str) -> tuple[str, ...]:
    """The tasks a checkpoint trained on ``task`` knows, each evaluated on its own (``mixed``: reach and push)."""
    env_id(task)
    return TASKS if task == "mixed" else (task,)


def env_id(task: str) -> str:
    """Gymnasium id of a task."""
    if task not in ENV_IDS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(ENV_IDS)}")
    return ENV_IDS[task]


class ExpertLabelWrapper(gym.Wrapper):
    """Adds the scripted expert's action for the current observation as ``info["expert_action"]``.

    The expert reads privileged simulator state, so it must run where the env lives (the worker). With
    ``chunk_length`` K > 1 the label is the expert's next K actions, flattened (K * n,) as a chunked policy's
    action is (:func:`vla_ros.policy.action_chunk.expert_chunk`).

    ``label_every_step`` (around a :class:`vla_ros.policy.action_chunk.ChunkedActionWrapper`): the states a chunk
    passes before its last step are labelled too, and listed in ``info[CHUNK_STEPS]`` with their observations,
    so imitation can learn from every state the policy visits, not only where it decides. ``reach_approach``: the
    expert's way down onto a reach target (:data:`vla_ros.envs.expert.REACH_APPROACHES`).
    """

    def __init__(self, env: gym.Env, chunk_length: int = 1, label_every_step: bool = False,
                 reach_approach: str = "hover"):
        super().__init__(env)
        from vla_ros.envs.expert import ScriptedExpert
        from vla_ros.policy.action_chunk import ChunkedActionWrapper

        self.expert = ScriptedExpert(env, reach_approach=reach_approach)
        self.chunk_length = int(chunk_length)
        self._passed: list[dict] | None = None
        if label_every_step:
            if not isinstance(env, ChunkedActionWrapper):
                raise ValueError("label_every_step labels the states inside a chunk: wrap a ChunkedActionWrapper")
            self._passed = []
            env.inner_step_hook = self._label_passed

    def _label_passed(self, obs: dict, info: dict) -> None:
        info = self._label(dict(info))
        self._passed.append({"obs": obs, EXPERT_ACTION: info[EXPERT_ACTION], TARGET_XY: info[TARGET_XY]})

    def reset(self, **kwargs):
        """Reset and label the first observation."""
        obs, info = self.env.reset(**kwargs)
        self.expert.reset()
        return obs, self._label(info)

    def step(self, action):
        """Step and label the next observation (and with ``label_every_step`` the states passed on the way)."""
        if self._passed is not None:
            self._passed = []
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._passed is not None:
            info[CHUNK_STEPS] = self._passed
        return obs, reward, terminated, truncated, self._label(info)

    def _label(self, info: dict) -> dict:
        info[EXPERT_ACTION], info[EXPERT_PHASE] = self.expert.act_with_phase(info)
        if self.chunk_length > 1:
            from vla_ros.policy.action_chunk import expert_chunk

            info[EXPERT_ACTION] = expert_chunk(self.env, self.expert, info, self.chunk_length,
                                               first=info[EXPERT_ACTION]).ravel()
        info[TARGET_XY] = target_image_xy(info, self.env.unwrapped.image_size)
        return info


class SettleAfterSuccess(gym.Wrapper):
    """Ends an episode ``settle_steps`` env steps after its first success instead of at it.

    Wraps an env made with ``terminate_on_success=False``. Imitation's demonstrations otherwise end at the first
    success: a reach at the 5 cm boundary, a push at 8 cm with the fingertip still against the object. The steps
    after it show the scripted expert settling (a reach descends onto the object's top; a push goes on 1 cm and
    rises off the object, :data:`vla_ros.envs.expert.RETRACT_MARGIN`), so a policy learns to come to rest inside
    the goal, and a done signal has fulfilled states to learn from that the policy really reaches. The episode's
    ``is_success`` at its end is that of its last state.
    """

    def __init__(self, env: gym.Env, settle_steps: int):
        super().__init__(env)
        if env.unwrapped.terminate_on_success:
            raise ValueError("SettleAfterSuccess needs an env made with terminate_on_success=False")
        if int(settle_steps) < 1:
            raise ValueError(f"settle_steps must be at least 1, got {settle_steps}")
        self.settle_steps = int(settle_steps)
        self._since_success: int | None = None

    def reset(self, **kwargs):
        """Reset; the next success starts the count again."""
        self._since_success = None
        return self.env.reset(**kwargs)

    def step(self, action):
        """Step; terminated once ``settle_steps`` steps have run since the first success."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._since_success is not None:
            self._since_success += 1
        elif info["is_success"]:
            self._since_success = 0
        if self._since_success is not None and self._since_success >= self.settle_steps:
            terminated = True
        return obs, reward, terminated, truncated, info


def target_image_xy(info: dict, image_size: int) -> np.ndarray:
    """The commanded object's image position (x, y) in [-1, 1] from an env step's ``info`` (simulator truth)."""
    u, v = info["objects"][info["target"]["index"]]["pixel"]
    return np.array([u / image_size * 2 - 1, v / image_size * 2 - 1], dtype=np.float32)


def make_env_fn(task: str, expert_labels: bool = False, action_chunk=None, label_every_step: bool = False,
                settle_steps: int = 0, reach_approach: str = "hover", **env_kwargs: Any) -> Callable[[], gym.Env]:
    """A picklable thunk creating one env (torch limited to one thread in worker processes, not in the caller's).

    ``action_chunk`` (:class:`vla_ros.policy.action_chunk.ActionChunk`, for a chunked policy): each step takes a
    chunk and runs its first E actions; expert labels are then chunks too, and with ``label_every_step`` the
    states inside each chunk are labelled as well (:class:`ExpertLabelWrapper`). ``settle_steps`` > 0: episodes
    run this many env steps past their first success (:class:`SettleAfterSuccess`). ``reach_approach``: the
    labelling expert's (:class:`ExpertLabelWrapper`).
    """
    from vla_ros.envs.expert import check_reach_approach

    check_reach_approach(reach_approach)  # here, not first in a worker process
    chunked = action_chunk is not None and not action_chunk.single
    if label_every_step and not (expert_labels and chunked):
        raise ValueError("label_every_step needs expert_labels and an action chunk executing more than one action")
    if settle_steps < 0:
        raise ValueError(f"settle_steps must be >= 0, got {settle_steps}")
    if settle_steps and env_kwargs.get("terminate_on_success") is not None:
        raise ValueError("settle_steps sets terminate_on_success itself")

    caller = os.getpid()

    def thunk() -> gym.Env:
        import torch

        if os.getpid() != caller:  # a worker process: one core each; an in-process env keeps the caller's setting
            torch.set_num_threads(1)
        import vla_ros.envs  # noqa: F401  (registers the ids)

        if settle_steps:
            env = SettleAfterSuccess(gym.make(env_id(task), terminate_on_success=False, **env_kwargs), settle_steps)
        else:
            env = gym.make(env_id(task), **env_kwargs)
        if chunked:
            from vla_ros.policy.action_chunk import ChunkedActionWrapper

            env = ChunkedActionWrapper(env, action_chunk)
        if expert_labels:  # outside the chunk: one label (a chunk) per decision, not one per step run
            env = ExpertLabelWrapper(env, chunk_length=action_chunk.predicted if chunked else 1,
                                     label_every_step=label_every_step, reach_approach=reach_approach)
        return env

    return thunk


VEC_ENVS = ("subproc", "dummy", "ray")


def make_vec_env(task: str, num_envs: int, seed: int, vec_env: str = "subproc", expert_labels: bool = False,
                 ray_workers: int = 0, ray_address: str | None = None, action_chunk=None,
                 label_every_step: bool = False, reach_approach: str = "hover", **env_kwargs: Any) -> VecEnv:
    """``num_envs`` envs, seeded ``seed, seed+1, ...`` at their first reset.

    ``action_chunk``: a chunked policy's :class:`vla_ros.policy.action_chunk.ActionChunk`; ``label_every_step``
    labels the states inside its chunks, ``reach_approach`` is the labelling expert's (:func:`make_env_fn`).

    ``vec_env``: ``subproc`` (one process per env), ``dummy`` (in this process) or ``ray`` (batches of envs
    hosted by ``ray_workers`` Ray actors, 0: one per free CPU; local Ray unless ``ray_address``). All three give
    the same transitions for the same seed and env count.
    """
    fns = [make_env_fn(task, expert_labels=expert_labels, action_chunk=action_chunk,
                       label_every_step=label_every_step, reach_approach=reach_approach, **env_kwargs)
           for _ in range(num_envs)]
    if vec_env == "ray":
        from vla_ros.distributed.ray_vec_env import RayVecEnv

        venv: VecEnv = RayVecEnv(fns, workers=ray_workers, address=ray_address or None)
    elif vec_env == "subproc" and num_envs > 1:
        venv: VecEnv = SubprocVecEnv(fns, start_method="forkserver")
    elif vec_env in ("subproc", "dummy"):
        venv = DummyVecEnv(fns)
    else:
        raise ValueError(f"vec_env must be one of {VEC_ENVS}, got {vec_env!r}")
    venv.seed(seed)
    return venv
