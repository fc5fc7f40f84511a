"""Action chunks with a receding horizon: the actor predicts the next K actions, the first E run, then it re-plans.

Why: a memoryless learner of the push expert, fed the policy's own map estimates of the object, pushes 50.5% of
scenes deciding every step and 73.5% predicting 8 actions and running 4 (``research/push_memory_probe.py``,
``docs/EXPERIMENT_LOG.md``, 2026-12-06). The expert's push switches waypoints on centimetre thresholds, and the
map's estimate jumps off the object in one frame in four to nine while the arm is next to it; a chunk commits to
a path for E steps instead of reacting to each of those frames (Diffusion Policy: 16 predicted, 8 executed).

The network's action is a chunk of K joint-delta actions, flattened to K * n (SB3's Gaussian actor and PPO need
no change: an env step is a decision). The pieces, none of which imports rclpy:

- :class:`ChunkedActionWrapper` runs the first E actions of a chunk in a Gymnasium env as one step (rewards
  summed, stopping where the episode ends), so training, evaluation and DAgger see decisions;
- :func:`expert_chunk` labels a state with the scripted expert's next K actions, rolled out from a snapshot of the
  simulator and undone (the expert reads state, so its chunk is what it would do from here);
- :class:`ActionQueue` is the run-time side: ``Policy`` keeps the chunk and hands out one action per frame,
  re-planning every E frames, as ``vla_node`` sends one joint command per camera frame.

K = E = 1 is the one-action policy every earlier checkpoint is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

ENV_STEPS = "env_steps"  # info key: simulator steps one chunked step ran (<= E; fewer where the episode ended)


@dataclass(frozen=True)
class ActionChunk:
    """K actions predicted per decision (``predicted``), the first E of them executed (``executed``)."""

    predicted: int = 1
    executed: int = 1

    def __post_init__(self):
        for name in ("predicted", "executed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"action chunk: {name} must be a positive integer, got {value!r}")
        if self.executed > self.predicted:
            raise ValueError(f"action chunk: cannot execute {self.executed} of {self.predicted} predicted actions")

    @classmethod
    def of(cls, network) -> "ActionChunk":
        """The chunk of a :class:`vla_ros.policy.network_config.NetworkConfig` (or its dict form)."""
        if isinstance(network, dict):
            return cls(int(network.get("action_chunk", 1)), int(network.get("chunk_execute", 1)))
        return cls(network.action_chunk, network.chunk_execute)

    @property
    def single(self) -> bool:
        """True for the one-action policy (no wrapper, no queue)."""
        return self.predicted == 1

    def split(self, action: np.ndarray, action_dim: int) -> np.ndarray:
        """A flat network action (K * n,) as (K, n); ``ValueError`` for another size."""
        action = np.asarray(action)
        if action.shape != (self.predicted * action_dim,):
            raise ValueError(f"a chunk of {self.predicted} actions of {action_dim} joints has "
                             f"{self.predicted * action_dim} values, got shape {action.shape}")
        return action.reshape(self.predicted, action_dim)


class ChunkedActionWrapper(gym.Wrapper):
    """One step runs the first E of a chunk of K actions (flat (K * n,) in [-1, 1]) in the wrapped env.

    The reward is the sum over the steps that ran; the episode's end (success, the object falling, the time
    limit) ends the chunk early. ``info`` is the last step's, with ``env_steps`` the number of steps run.
    ``inner_step_hook`` (None: unused), when set, is called ``(obs, info)`` after each step that ran before the
    last one: the states the policy passes without deciding (the expert labels them:
    :class:`vla_ros.policy.envs.ExpertLabelWrapper`).
    """

    inner_step_hook = None

    def __init__(self, env: gym.Env, chunk: ActionChunk):
        super().__init__(env)
        self.chunk = chunk
        self.joint_dim = int(env.action_space.shape[0])
        low, high = env.action_space.low, env.action_space.high
        self.action_space = gym.spaces.Box(np.tile(low, chunk.predicted), np.tile(high, chunk.predicted),
                                           dtype=env.action_space.dtype)

    def step(self, action):
        """Run up to E actions of the chunk; the 5-tuple of the last, its reward the sum."""
        actions = self.chunk.split(np.asarray(action, dtype=np.float32), self.joint_dim)
        total = 0.0
        for k in range(self.chunk.executed):
            obs, reward, terminated, truncated, info = self.env.step(actions[k])
            total += float(reward)
            if terminated or truncated:
                break
            if k < self.chunk.executed - 1 and self.inner_step_hook is not None:
                self.inner_step_hook(obs, info)
        info[ENV_STEPS] = k + 1
        return obs, total, terminated, truncated, info


def expert_chunk(env, expert, info: dict, length: int, first: np.ndarray | None = None) -> np.ndarray:
    """The scripted ``expert``'s next ``length`` actions (length, n) from ``env``'s current state.

    The env (a :class:`vla_ros.envs.tabletop.TabletopEnv`) is rolled ahead without rendering and restored, so the
    caller's episode goes on unchanged. Past the episode's end (success or the object falling) the chunk holds
    still (zeros), as the arm would once done. ``first``: the expert's action for ``info`` where the caller has it.
    """
    first = expert.act(info) if first is None else np.asarray(first, dtype=np.float32)
    if length == 1:
        return first[None]
    base = env.unwrapped
    snapshot = base.snapshot()
    actions = np.zeros((length, first.shape[0]), dtype=np.float32)
    actions[0] = first
    try:
        base.render_observation = False  # labels only: no frames
        current = info
        for k in range(length):
            if k:
                actions[k] = expert.act(current)
            _, _, terminated, _, current = base.step(actions[k])
            if terminated:
                break
    finally:
        base.restore(snapshot)
    return actions


class ActionQueue:
    """The run-time side of chunks: the actions of the last plan still to run, one per frame."""

    def __init__(self, chunk: ActionChunk, action_dim: int):
        self.chunk, self.action_dim = chunk, int(action_dim)
        self._pending: deque[np.ndarray] = deque()

    def clear(self) -> None:
        """Forget the plan (a new episode or command): the next frame re-plans."""
        self._pending.clear()

    @property
    def needs_plan(self) -> bool:
        """True when no planned action is left to run."""
        return not self._pending

    def plan(self, action: np.ndarray) -> None:
        """Keep the first E actions of a flat network action (K * n,)."""
        actions = self.chunk.split(action, self.action_dim)
        self._pending = deque(np.array(a, dtype=np.float64) for a in actions[: self.chunk.executed])

    def pop(self) -> np.ndarray:
        """The next planned action (n,); ``RuntimeError`` when none is left."""
        if not self._pending:
            raise RuntimeError("no planned action left: plan first")
        return self._pending.popleft()
