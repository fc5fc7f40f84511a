"""A learned "done" signal: whether the current observation shows the command fulfilled (no rclpy).

:class:`DoneHead` is a small MLP on what the policy computes anyway (:func:`done_inputs`): its features (the
fusion's output and proprioception), its critic's latent and value and its actor's action. Near the goal the action
shrinks and the value saturates, which the features alone do not show as sharply. It is trained after the policy,
which stays frozen, from the simulator's success flag (``info["is_success"]``, e.g. the fingertip within 5 cm of the
commanded object for reach):

- **data** (:func:`collect_done_data`): the policy's own deterministic episodes, run to the time limit instead
  of ending at the first success; each observation is labelled by whether its state is a success;
- **threshold** (:func:`threshold_for_episode_precision`): the lowest probability at which stopping at the first
  firing lands on a success in at least ``min_precision`` of validation episodes (which training never sees);
- **scoring** (:func:`episode_metrics`): stopping each episode where the signal first fires, as vla_node does.

A policy with a skill reader also gets one threshold per task (``task_thresholds``), each chosen on the validation
episodes whose command the reader takes for that task (:func:`command_tasks`: reach, or a push in any direction).
The task comes from the command alone, as the policy's own conditioning does, so a push whose episodes rarely end
fulfilled (and where the head cannot tell its approach from the goal) does not make reach's signal fire late or
never: that task's threshold alone rises.

Stored in the policy checkpoint as ``done_head.safetensors`` with ``config["done"]``. ``Policy`` then exposes
``has_done_signal`` and ``last_done``; vla_node holds still and reports completion when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DONE_WEIGHTS_FILE = "done_head.safetensors"
DONE_TASKS = ("reach", "push")
"""the tasks a done threshold is chosen for: index 0 reach, 1 push (any direction; :func:`command_tasks`)"""
NO_TASK = -1
"""the task index of observations of a policy without a skill reader (only the global threshold applies)"""


@torch.no_grad()
def command_skills(network, observations: dict) -> torch.Tensor | None:
    """The skill reader's (B, 5) probabilities for each observation's command, None without a reader or sentence.

    The network's frozen reader reads the sentence embedding: reach, then push left / right / forward / back.
    """
    from vla_ros.keys import FEAT_SENTENCE, FEAT_SKILL_LOGITS

    fusion = getattr(network.features_extractor, "fusion", None)
    key = FEAT_SKILL_LOGITS if getattr(fusion, "skill_reader_tokens", False) else FEAT_SENTENCE
    if not getattr(fusion, "skill_reader_width", 0) or key not in observations:
        return None
    return fusion.skills(torch.as_tensor(observations[key]).to(fusion.skill_weight.device, torch.float32))


def command_tasks(network, observations: dict) -> np.ndarray:
    """The :data:`DONE_TASKS` index (B,) each observation's command reads as, :data:`NO_TASK` without a reader.

    Read by the network's frozen skill reader from the sentence embedding (:func:`command_skills`): its reach
    class is reach, its four push directions are push.
    """
    skills = command_skills(network, observations)
    if skills is None:
        return np.full(len(next(iter(observations.values()))), NO_TASK, dtype=np.int64)
    return (skills.argmax(dim=-1) > 0).long().cpu().numpy()


DONE_INPUT_KINDS = ("policy", "estimates", "moved")
"""what a done head reads (:func:`done_inputs`): ``policy``, the policy's features, critic latent, value and action
(the default, and every head stored before ``inputs`` existed); ``estimates``, only the fusion's position estimates
of the commanded object (now, in the episode's first frame and their difference), the joint state and the skill
reader's reading of the command"""


def done_inputs(network, features: torch.Tensor, fused=None, observations: dict | None = None,
                kind: str = "policy") -> torch.Tensor:
    """The done head's input (B, D) for the policy's features (B, F), by ``kind`` (:data:`DONE_INPUT_KINDS`).

    ``policy``: features, critic latent, value, action. ``estimates``: the fusion's estimate ``fused.xy`` (B, 2),
    with a reference frame also ``fused.reference_xy`` and the displacement between the two (a pushed object moves
    away from where it started), with ``current_estimate`` the current frame's own estimate and its displacement
    (the prior holds ``xy`` near the start), the normalised joint state (where the fingertip is) and, with a skill
    reader, the reader's five skill probabilities (which displacement fulfils the command). 20-odd numbers instead
    of hundreds, so a head fitted on a few hundred episodes has less to overfit. ``moved``: ``estimates`` plus the
    current frame's own estimate and its displacement from the first frame's (``fused.frame_xy``, which a
    reference-prior fusion computes whether or not its MLP reads it): a push is fulfilled by how far the object
    moved, which the prior hides (a head on ``estimates`` of such a policy never fired on push).
    """
    if kind == "policy":
        critic = network.mlp_extractor.forward_critic(features)
        action = network.action_net(network.mlp_extractor.forward_actor(features))
        return torch.cat([features, critic, network.value_net(critic), action], dim=-1).float()
    if kind not in DONE_INPUT_KINDS:
        raise ValueError(f"unknown done inputs {str(kind)[:40]!r}; known: {DONE_INPUT_KINDS}")
    from vla_ros.keys import OBS_PROPRIO

    if kind == "moved" and (fused is None or fused.frame_xy is None):
        raise ValueError("done inputs 'moved' need a region_map fusion with a reference prior (its frame_xy)")
    if fused is None or fused.xy is None or observations is None:
        raise ValueError("done inputs 'estimates' need a fusion that estimates the object's position "
                         "(region_map, region, cross_attention) and the observations")
    parts = [fused.xy]
    if fused.reference_xy is not None:
        parts += [fused.reference_xy, fused.xy - fused.reference_xy]
    if fused.current_xy is not None:  # the current frame's own estimate (current_estimate), which follows a push
        parts += [fused.current_xy, fused.current_xy - fused.reference_xy]
    if kind == "moved":
        parts += [fused.frame_xy, fused.frame_xy - fused.reference_xy]
    parts.append(torch.as_tensor(observations[OBS_PROPRIO], device=fused.xy.device, dtype=fused.xy.dtype))
    if getattr(network.features_extractor.fusion, "skill_reader_width", 0):
        skills = command_skills(network, observations)
        if skills is None:
            raise ValueError("done inputs 'estimates' of a skill-reader policy need the command's sentence embedding")
        parts.append(skills.to(fused.xy.device, fused.xy.dtype))
    return torch.cat(parts, dim=-1).float()


def estimate_columns(width: int, kind: str, proprio: int, skills: int = 5) -> tuple[slice, slice]:
    """(first frame's, current) object estimate columns of :func:`done_inputs` of ``kind`` and ``width``.

    For a reference-frame fusion with ``proprio`` joint-state columns and ``skills`` skill-reader columns (0
    without a reader): ``estimates`` starts with the estimate (a locator's follows the object) and the first
    frame's; ``moved`` ends with the current frame's own estimate (``frame_xy``) and its displacement before the
    joint state and the skill reading. Works from stored inputs alone (research probes read cached episodes).
    """
    if kind == "moved":
        end = width - proprio - skills - 2
        return slice(2, 4), slice(end - 2, end)
    if kind == "estimates":
        return slice(2, 4), slice(0, 2)
    raise ValueError(f"done inputs {str(kind)[:40]!r} do not hold the object's estimates in known columns")


def done_input_dim(network, kind: str = "policy") -> int:
    """Width of :func:`done_inputs` of ``kind`` for ``network`` (an SB3 actor-critic policy)."""
    if kind == "policy":
        return int(network.features_extractor.features_dim + network.mlp_extractor.latent_dim_vf + 1
                   + network.action_space.shape[0])
    if kind not in DONE_INPUT_KINDS:
        raise ValueError(f"unknown done inputs {str(kind)[:40]!r}; known: {DONE_INPUT_KINDS}")
    from vla_ros.keys import OBS_PROPRIO

    extractor = network.features_extractor
    if not getattr(extractor.fusion, "estimates_position", False):
        raise ValueError(f"done inputs 'estimates' need a fusion that estimates the object's position; "
                         f"{type(extractor.fusion).__name__} does not")
    width = 2 + (4 if extractor.reference_frame else 0) + int(network.observation_space[OBS_PROPRIO].shape[0])
    width += 4 if getattr(extractor.fusion, "current_estimate", False) else 0
    if kind == "moved":
        if getattr(extractor.fusion, "reference_prior", None) is None:
            raise ValueError("done inputs 'moved' need a region_map fusion with a reference prior")
        width += 4
    return width + (5 if getattr(extractor.fusion, "skill_reader_width", 0) else 0)


def proprio_columns(network, kind: str) -> tuple[int, int]:
    """(start, end) of the joint state within :func:`done_inputs` of ``kind`` (``estimates`` or ``moved``)."""
    from vla_ros.keys import OBS_PROPRIO

    if kind not in ("estimates", "moved"):
        raise ValueError(f"done inputs {str(kind)[:40]!r} do not hold the joint state in known columns")
    width = int(network.observation_space[OBS_PROPRIO].shape[0])
    skills = 5 if getattr(network.features_extractor.fusion, "skill_reader_width", 0) else 0
    end = done_input_dim(network, kind) - skills
    return end - width, end


class DoneHead(torch.nn.Module):
    """done inputs (B, D) (:func:`done_inputs`) -> done logit (B,).

    ``fingertip_proprio`` (start, end): the columns of the inputs holding the joint state; the head then also
    reads a :class:`~vla_ros.policy.fingertip_locator.FingertipLocator`'s reading of them (the fingertip's image
    position and height), fitted first and frozen (:func:`train_done_head`).
    """

    def __init__(self, features_dim: int, hidden: int = 64, fingertip_proprio: tuple[int, int] | None = None):
        super().__init__()
        extra = 0
        self.fingertip_proprio = None if fingertip_proprio is None else tuple(int(c) for c in fingertip_proprio)
        if self.fingertip_proprio is not None:
            from vla_ros.policy.fingertip_locator import LOCATOR_OUTPUTS, FingertipLocator

            start, end = self.fingertip_proprio
            self.locator = FingertipLocator(end - start)
            extra = LOCATOR_OUTPUTS
        self.net = torch.nn.Sequential(torch.nn.Linear(features_dim + extra, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Done logits (B,)."""
        if self.fingertip_proprio is not None:
            start, end = self.fingertip_proprio
            features = torch.cat([features, self.locator(features[:, start:end])], dim=-1)
        return self.net(features).squeeze(-1)


@dataclass(frozen=True)
class DoneConfig:
    """``config["done"]``: the head's size and the probability at which it fires.

    ``features_dim`` is the width of its input (:func:`done_input_dim` of ``inputs``). ``threshold`` applies to
    every command; ``task_thresholds`` (``{"reach": p, "push": p}``, skill-reader policies), where present,
    replaces it for the commands of that task (:func:`command_tasks`). Older checkpoints have none.
    """

    features_dim: int
    threshold: float
    hidden: int = 64
    calibration: dict[str, Any] = field(default_factory=dict)
    task_thresholds: dict[str, float] = field(default_factory=dict)
    inputs: str = "policy"
    """what the head reads (:data:`DONE_INPUT_KINDS`); heads stored before this field read ``policy``"""
    fingertip_proprio: tuple[int, int] | None = None
    """the joint state's columns in the inputs, which a fingertip locator in the head reads (:class:`DoneHead`);
    None (every head stored before it): no locator"""

    def __post_init__(self):
        if self.inputs not in DONE_INPUT_KINDS:
            raise ValueError(f"done.inputs must be one of {DONE_INPUT_KINDS}, got {str(self.inputs)[:40]!r}")
        if isinstance(self.features_dim, bool) or not isinstance(self.features_dim, int) or \
                not 1 <= self.features_dim <= 65536:
            raise ValueError(f"done.features_dim must be an integer in [1, 65536], got {self.features_dim!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or not 1 <= self.hidden <= 4096:
            raise ValueError(f"done.hidden must be an integer in [1, 4096], got {self.hidden!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"done.threshold must be a probability in (0, 1), got {self.threshold!r}")
        if not isinstance(self.task_thresholds, dict):
            raise ValueError(f"done.task_thresholds must be a mapping, got {type(self.task_thresholds).__name__}")
        for task, value in self.task_thresholds.items():
            if task not in DONE_TASKS:
                raise ValueError(f"done.task_thresholds: unknown task {str(task)[:40]!r}; known: {DONE_TASKS}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"done.task_thresholds.{task} must be a probability in (0, 1), got {value!r}")
        if self.fingertip_proprio is not None:
            columns = self.fingertip_proprio
            valid = (isinstance(columns, (list, tuple)) and len(columns) == 2
                     and all(isinstance(c, int) and not isinstance(c, bool) for c in columns)
                     and 0 <= columns[0] < columns[1] <= self.features_dim)
            if not valid:
                raise ValueError(f"done.fingertip_proprio must be [start, end] columns within the inputs, "
                                 f"got {str(columns)[:60]}")
            if self.inputs not in ("estimates", "moved"):
                raise ValueError("done.fingertip_proprio needs inputs 'estimates' or 'moved' (they hold the joints)")
            object.__setattr__(self, "fingertip_proprio", tuple(columns))

    def thresholds(self, tasks: np.ndarray) -> np.ndarray:
        """The firing threshold (N,) for observations whose commands read as ``tasks`` (:func:`command_tasks`)."""
        tasks = np.asarray(tasks)
        out = np.full(tasks.shape, float(self.threshold))
        for index, task in enumerate(DONE_TASKS):
            if task in self.task_thresholds:
                out[tasks == index] = float(self.task_thresholds[task])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DoneConfig":
        """Read ``config["done"]`` (``ValueError`` naming the field for a malformed one)."""
        if not isinstance(data, dict):
            raise ValueError(f"done must be a mapping, got {type(data).__name__}")
        try:
            task_thresholds = data.get("task_thresholds") or {}
            if not isinstance(task_thresholds, dict):
                raise TypeError(f"task_thresholds must be a mapping, got {type(task_thresholds).__name__}")
            return cls(features_dim=data["features_dim"], threshold=float(data["threshold"]),
                       hidden=data.get("hidden", 64), calibration=dict(data.get("calibration") or {}),
                       task_thresholds=dict(task_thresholds), inputs=data.get("inputs", "policy"),
                       fingertip_proprio=data.get("fingertip_proprio"))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed done config: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = {"features_dim": self.features_dim, "threshold": self.threshold, "hidden": self.hidden,
                "calibration": dict(self.calibration)}
        if self.task_thresholds:
            data["task_thresholds"] = dict(self.task_thresholds)
        if self.inputs != "policy":  # older readers know only the policy's inputs, and a head on them stays as it was
            data["inputs"] = self.inputs
        if self.fingertip_proprio is not None:
            data["fingertip_proprio"] = list(self.fingertip_proprio)
        return data


@torch.no_grad()
def collect_done_data(network, encoder, normalizer, task: str, episodes: int, seed: int, num_envs: int = 2,
                      vec_env: str = "subproc", progress: bool = False, inputs: str = "policy",
                      privileged: bool = False, **env_kwargs) -> dict[str, np.ndarray]:
    """The policy's features and done labels on every observation of ``episodes`` deterministic episodes.

    Episodes do not end at success (``terminate_on_success=False``): they run to the time limit, as the arm
    would until a done signal stops it, so fulfilled observations are seen well inside success too. Returns
    ``features`` (N, D) float32 (the head's inputs, :func:`done_inputs` of ``inputs``), ``labels`` (N,) bool (the
    observation's state is a success), ``episode`` (N,) and ``step`` (N,) int; with ``privileged`` also the
    simulator's state of each observation, ``privileged`` (N, 12 + 3 * objects) (``info["privileged"]``: fingertip,
    target, target's start, push direction, every object), for analysis only: a head never reads it.
    """
    from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
    from vla_ros.policy.envs import make_vec_env

    extractor = network.features_extractor
    venv = ClipFeatureVecEnv.for_network(
        make_vec_env(task, num_envs, seed, vec_env=vec_env, terminate_on_success=False,
                     action_chunk=getattr(extractor, "action_chunk", None), **env_kwargs),
        network, encoder, normalizer)
    rows: dict[str, list] = {"features": [], "labels": [], "episode": [], "step": [], "task": []}
    if privileged:
        rows["privileged"] = []
    current, steps = np.arange(num_envs), np.zeros(num_envs, int)
    success = np.zeros(num_envs, bool)  # the state of the current observation (a reset state is not)
    next_episode, finished = num_envs, 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"done data {env_kwargs.get('split', '')}", unit="ep", leave=False)
    try:
        obs = venv.reset()
        state = [info.get("privileged") for info in venv.reset_infos]  # of each env's current observation
        while finished < episodes:
            keep = current < episodes
            observations = {k: torch.as_tensor(v) for k, v in obs.items()}
            features, fused = extractor.extract(observations)
            features = done_inputs(network, features, fused, observations, inputs).numpy()
            tasks = command_tasks(network, obs)
            for key, value in (("features", features), ("labels", success), ("episode", current), ("step", steps),
                               ("task", tasks)):
                rows[key].append(np.asarray(value)[keep].copy())
            if privileged:
                rows["privileged"].append(np.stack(state).astype(np.float32)[keep])
            actions, _ = network.predict(obs, deterministic=True)
            obs, _, dones, infos = venv.step(actions)
            success = np.array([bool(info.get("is_success", False)) for info in infos])
            state = [(venv.reset_infos[i] if dones[i] else info).get("privileged") for i, info in enumerate(infos)]
            steps += 1
            for i in np.flatnonzero(dones):  # time limit (or the object fell): the next observation is a reset
                finished += int(current[i] < episodes)
                current[i], steps[i], success[i] = next_episode, 0, False
                next_episode += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        venv.close()
    return {key: np.concatenate(values) for key, values in rows.items()}


def episode_metrics(probabilities: np.ndarray, data: dict[str, np.ndarray], threshold) -> dict[str, Any]:
    """How the done signal would stop each episode of ``data`` (from :func:`collect_done_data`).

    ``threshold``: one probability, or one per observation (:meth:`DoneConfig.thresholds`).

    The arm stops at the first observation where it fires. ``precision``: of the episodes where it fires, the
    share where that observation is a success; ``recall``: of the episodes that reach success within the time
    limit, the share where it fires on a success; ``task_success_when_stopping``: episodes stopped on a success.
    """
    fired = probabilities >= threshold
    stopped_right = stopped = reached = fired_on_success = 0
    episodes = np.unique(data["episode"])
    for episode in episodes:
        rows = np.flatnonzero(data["episode"] == episode)
        rows = rows[np.argsort(data["step"][rows])]
        labels, fires = data["labels"][rows], fired[rows]
        reached += int(labels.any())
        if fires.any():
            first = np.argmax(fires)
            stopped += 1
            stopped_right += int(labels[first])
        fired_on_success += int((fires & labels).any())
    return {"episodes": len(episodes), "stopped": stopped, "reached_success": reached,
            "precision": stopped_right / stopped if stopped else float("nan"),
            "recall": stopped_right / reached if reached else float("nan"),
            "task_success_when_stopping": stopped_right / max(1, len(episodes))}


def train_done_head(features: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 200,
                    hidden: int = 64, locator=None, fingertip_proprio: tuple[int, int] | None = None) -> DoneHead:
    """Fit a :class:`DoneHead` with class-balanced BCE (full batch, Adam).

    ``locator`` (a fitted :class:`~vla_ros.policy.fingertip_locator.FingertipLocator`) with ``fingertip_proprio``
    (the joint state's columns in ``features``): the head also reads the locator, which stays as fitted.
    """
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    if (locator is None) != (fingertip_proprio is None):
        raise ValueError("a fingertip locator needs the joint state's columns (fingertip_proprio), and they it")
    head = DoneHead(x.shape[1], hidden, fingertip_proprio)
    if locator is not None:
        head.locator.load_state_dict(locator.state_dict())
        head.locator.requires_grad_(False)
    positives = max(1.0, float(y.sum()))
    weight = torch.tensor((len(y) - positives) / positives)
    optimiser = torch.optim.Adam(head.net.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y, pos_weight=weight)
        loss.backward()
        optimiser.step()
    return head.eval()


@torch.no_grad()
def done_probabilities(head: DoneHead, features: np.ndarray) -> np.ndarray:
    """P(done) (N,) for features (N, F)."""
    return torch.sigmoid(head(torch.as_tensor(features, dtype=torch.float32)).double()).numpy()


def threshold_for_episode_precision(probabilities: np.ndarray, data: dict[str, np.ndarray],
                                    min_precision: float = 0.97, candidates: int = 300) -> float:
    """The lowest threshold (of ``candidates`` probability quantiles) precise enough when stopping on it.

    Stopping each episode at the first firing must land on a success in at least ``min_precision`` of the
    episodes where it fires (:func:`episode_metrics`).
    """
    levels = np.unique(np.quantile(probabilities, np.linspace(0.3, 0.999, candidates)))
    for level in levels:  # ascending: the first that is precise enough fires the most
        metrics = episode_metrics(probabilities, data, float(level))
        if metrics["stopped"] and metrics["precision"] >= min_precision:
            return float(np.clip(level, 1e-9, 1.0 - 1e-9))
    return float(np.nextafter(1.0, 0.0))


def episodes_of_task(data: dict[str, np.ndarray], task: int) -> np.ndarray:
    """Row mask of ``data``'s observations whose command reads as ``task`` (a :data:`DONE_TASKS` index)."""
    return np.asarray(data["task"]) == task


def select_rows(data: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """``data`` (from :func:`collect_done_data`) restricted to the rows of ``mask``."""
    return {key: np.asarray(value)[mask] for key, value in data.items()}


def task_thresholds(probabilities: np.ndarray, data: dict[str, np.ndarray],
                    min_precision: float = 0.97) -> dict[str, float]:
    """One threshold per task present in ``data`` (:func:`threshold_for_episode_precision` on its episodes)."""
    out = {}
    for index, task in enumerate(DONE_TASKS):
        mask = episodes_of_task(data, index)
        if mask.any():
            out[task] = threshold_for_episode_precision(probabilities[mask], select_rows(data, mask), min_precision)
    return out
