"""A learned "done" signal: whether the current observation shows the command fulfilled (no rclpy).

:class:`DoneHead` is a small MLP on the policy's features (the fusion's output and proprioception, what its actor
reads). It is trained after the policy, which stays frozen, from the simulator's success flag
(``info["is_success"]``, e.g. the fingertip within 5 cm of the commanded object for reach):

- **data** (:func:`collect_done_data`): the policy's own deterministic episodes. Every observation it acted on is
  a negative (the simulator ends an episode at its first success); the final observation of a successful
  episode (SB3's ``terminal_observation``) is a positive;
- **threshold** (:func:`threshold_for_precision`): the lowest probability at which firings on validation
  episodes, which training never sees, are at least ``min_precision`` right.

Stored in the policy checkpoint as ``done_head.safetensors`` with ``config["done"]``. ``Policy`` then exposes
``has_done_signal`` and ``last_done``; vla_node holds still and reports completion when it fires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

DONE_WEIGHTS_FILE = "done_head.safetensors"


class DoneHead(torch.nn.Module):
    """features (B, F) -> done logit (B,)."""

    def __init__(self, features_dim: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(features_dim, hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Done logits (B,)."""
        return self.net(features).squeeze(-1)


@dataclass(frozen=True)
class DoneConfig:
    """``config["done"]``: the head's size and the probability at which it fires."""

    features_dim: int
    threshold: float
    hidden: int = 64
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.features_dim, bool) or not isinstance(self.features_dim, int) or \
                not 1 <= self.features_dim <= 65536:
            raise ValueError(f"done.features_dim must be an integer in [1, 65536], got {self.features_dim!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or not 1 <= self.hidden <= 4096:
            raise ValueError(f"done.hidden must be an integer in [1, 4096], got {self.hidden!r}")
        if not isinstance(self.threshold, (int, float)) or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"done.threshold must be a probability in (0, 1), got {self.threshold!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DoneConfig":
        """Read ``config["done"]`` (``ValueError`` naming the field for a malformed one)."""
        if not isinstance(data, dict):
            raise ValueError(f"done must be a mapping, got {type(data).__name__}")
        try:
            return cls(features_dim=data["features_dim"], threshold=float(data["threshold"]),
                       hidden=data.get("hidden", 64), calibration=dict(data.get("calibration") or {}))
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed done config: {error}") from error

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"features_dim": self.features_dim, "threshold": self.threshold, "hidden": self.hidden,
                "calibration": dict(self.calibration)}


@torch.no_grad()
def collect_done_data(network, encoder, normalizer, task: str, episodes: int, seed: int, num_envs: int = 2,
                      vec_env: str = "subproc", progress: bool = False, **env_kwargs) -> dict[str, np.ndarray]:
    """The policy's features and done labels over ``episodes`` deterministic episodes.

    Returns ``features`` (N, F) float32, ``labels`` (N,) bool and ``episode`` (N,) int: each acted-on
    observation (label False) and each episode's final observation (label: it succeeded).
    """
    from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
    from vla_ros.policy.envs import make_vec_env

    extractor = network.features_extractor
    venv = ClipFeatureVecEnv(make_vec_env(task, num_envs, seed, vec_env=vec_env, **env_kwargs), encoder, normalizer,
                             reference_frame=getattr(extractor, "reference_frame", False))
    features, labels, episode_of = [], [], []
    current = np.arange(num_envs)
    next_episode = num_envs
    finished = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, desc=f"done data {env_kwargs.get('split', '')}", unit="ep", leave=False)
    try:
        obs = venv.reset()
        while finished < episodes:
            tensors = {k: torch.as_tensor(v) for k, v in obs.items()}
            features.append(extractor.extract(tensors)[0].float().numpy())
            labels.append(np.zeros(num_envs, bool))
            episode_of.append(current.copy())
            actions, _ = network.predict(obs, deterministic=True)
            obs, _, dones, infos = venv.step(actions)
            for i in np.flatnonzero(dones):
                terminal = infos[i].get("terminal_observation")
                if terminal is not None and finished < episodes:
                    one = {k: torch.as_tensor(np.asarray(v)[None]) for k, v in terminal.items()}
                    features.append(extractor.extract(one)[0].float().numpy())
                    labels.append(np.array([bool(infos[i].get("is_success", False))]))
                    episode_of.append(np.array([current[i]]))
                finished += 1
                current[i] = next_episode
                next_episode += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        venv.close()
    episode = np.concatenate(episode_of)
    keep = episode < episodes  # steps of episodes started after the quota are dropped
    return {"features": np.concatenate(features)[keep], "labels": np.concatenate(labels)[keep],
            "episode": episode[keep]}


def train_done_head(features: np.ndarray, labels: np.ndarray, seed: int = 0, epochs: int = 200,
                    hidden: int = 64) -> DoneHead:
    """Fit a :class:`DoneHead` with class-balanced BCE (full batch, Adam)."""
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.float32)
    head = DoneHead(x.shape[1], hidden)
    positives = max(1.0, float(y.sum()))
    weight = torch.tensor((len(y) - positives) / positives)
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(x), y, pos_weight=weight)
        loss.backward()
        optimiser.step()
    return head.eval()


@torch.no_grad()
def done_probabilities(head: DoneHead, features: np.ndarray) -> np.ndarray:
    """P(done) (N,) for features (N, F)."""
    return torch.sigmoid(head(torch.as_tensor(features, dtype=torch.float32))).numpy()


def threshold_for_precision(probabilities: np.ndarray, labels: np.ndarray, min_precision: float = 0.97) -> float:
    """The lowest threshold whose firings (probability >= it) are at least ``min_precision`` positives."""
    order = np.argsort(-probabilities)
    hits = np.cumsum(labels[order])
    precision = hits / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(precision >= min_precision)
    if len(ok) == 0:
        return float(np.nextafter(1.0, 0.0))
    threshold = float(probabilities[order][ok[-1]])
    return float(np.clip(threshold, 1e-6, 1.0 - 1e-6))


def precision_recall(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision and recall of firing at ``threshold``, with the counts."""
    fired = probabilities >= threshold
    true = int((fired & labels).sum())
    return {"precision": true / max(1, int(fired.sum())), "recall": true / max(1, int(labels.sum())),
            "fired": int(fired.sum()), "positives": int(labels.sum()), "observations": len(labels)}
