"""Behaviour-cloning warm start from the scripted expert (with DAgger rounds) before PPO.

The expert reads privileged simulator state; the network it teaches sees only CLIP features of the
camera frame and command plus proprioception. DAgger rounds let the network drive (mixed with the
expert with probability ``beta``) and label the states it visits, which fixes BC's compounding
errors. Returns along those rollouts also warm up the value head, so PPO starts with a sensible critic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vla_ros.grounding.fusion import RegionMaps
from vla_ros.keys import FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES, FEAT_TEXT
from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
from vla_ros.policy.envs import CHUNK_STEPS, EXPERT_ACTION, TARGET_XY


@dataclass
class Demonstrations:
    """Observations (CLIP features, float16 to halve memory), expert labels and returns."""

    obs: dict[str, np.ndarray]
    expert_actions: np.ndarray
    target_xy: np.ndarray
    returns: np.ndarray
    successes: int
    episodes: int
    reference_xy: np.ndarray | None = None
    """the target's image position in its episode's first frame (for reference-frame fusions)"""
    decisions_run: int | None = None
    """decisions stepped to collect these samples, kept or not (takeover rollouts drop the learner's); None: one
    per sample"""

    def __len__(self) -> int:
        return len(self.expert_actions)

    @property
    def cost(self) -> int:
        """Decisions stepped in the simulator to collect these samples (environment steps / chunk_execute)."""
        return len(self) if self.decisions_run is None else self.decisions_run

    def save(self, path) -> None:
        """Write to an ``.npz`` file (no pickle)."""
        extra = {} if self.reference_xy is None else {"reference_xy": self.reference_xy}
        if self.decisions_run is not None:
            extra["decisions_run"] = np.array(self.decisions_run)
        np.savez(path, expert_actions=self.expert_actions, target_xy=self.target_xy, returns=self.returns,
                 counts=np.array([self.successes, self.episodes]), **extra,
                 **{f"obs/{k}": v for k, v in self.obs.items()})

    @classmethod
    def load(cls, path) -> "Demonstrations":
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            obs = {k.removeprefix("obs/"): data[k] for k in data.files if k.startswith("obs/")}
            successes, episodes = (int(x) for x in data["counts"])
            return cls(obs=obs, expert_actions=data["expert_actions"], target_xy=data["target_xy"],
                       returns=data["returns"], successes=successes, episodes=episodes,
                       reference_xy=data["reference_xy"] if "reference_xy" in data.files else None,
                       decisions_run=int(data["decisions_run"]) if "decisions_run" in data.files else None)

    @staticmethod
    def concatenate(parts: list["Demonstrations"]) -> "Demonstrations":
        """Merge data sets (DAgger aggregation); one part is returned as it is, not copied."""
        if len(parts) == 1:
            return parts[0]
        keys = parts[0].obs.keys()
        return Demonstrations(
            obs={k: np.concatenate([p.obs[k] for p in parts]) for k in keys},
            expert_actions=np.concatenate([p.expert_actions for p in parts]),
            target_xy=np.concatenate([p.target_xy for p in parts]),
            returns=np.concatenate([p.returns for p in parts]),
            successes=sum(p.successes for p in parts),
            episodes=sum(p.episodes for p in parts),
            reference_xy=(np.concatenate([p.reference_xy for p in parts])
                          if all(p.reference_xy is not None for p in parts) else None),
            decisions_run=sum(p.cost for p in parts),
        )


def _discounted_returns(rewards: list[np.ndarray], dones: list[np.ndarray], gamma: float) -> np.ndarray:
    returns = np.zeros_like(rewards[0])
    out = []
    for r, d in zip(reversed(rewards), reversed(dones)):
        returns = r + gamma * returns * (1.0 - d)
        out.append(returns.copy())
    return np.stack(out[::-1])  # (T, num_envs); unfinished tails are truncated estimates


@torch.no_grad()
def collect(venv: ClipFeatureVecEnv, episodes: int, rng: np.random.Generator, network=None,
            beta: float = 1.0, gamma: float = 0.97, desc: str = "collect",
            takeover: tuple[int, int] | None = None, action_noise: float = 0.0,
            passed_states: bool = False) -> Demonstrations:
    """Roll out and label with the expert.

    Mixed rollouts (``takeover`` None): the expert acts with probability ``beta`` per step, else ``network``; every
    step is kept. Takeover rollouts (``takeover=(low, high)``, with ``network``): the network acts alone for a
    number of decisions drawn per episode from ``low..high``, then the expert drives to the episode's end, and
    only the expert's stretch is kept. Its first state is one the learner led to (a stalled or lost push), and the
    rest shows the expert's way out of it, labels that stay consistent with each other, unlike the expert's
    labels on every state the learner visits (learner-driven DAgger collapsed: docs/EXPERIMENT_LOG.md).

    ``action_noise`` (DART, Laskey et al. 2017): Gaussian noise of this standard deviation (normalised action
    units) on every action the expert executes, clipped to [-1, 1]; the labels stay the expert's clean actions,
    so the demonstrations cover states just off the expert's path with the way back to it.

    ``passed_states`` (a venv made with ``label_every_step``): the states each chunk passed before its last step
    are kept as well, with their own expert labels, so a policy deciding every E steps imitates on E times the
    states it visits. Their return is their decision's (the rewards of the chunk's first steps included).
    """
    if passed_states and takeover is not None:
        raise ValueError("passed_states keeps every state of mixed rollouts; takeover rounds keep only the expert's")
    if action_noise < 0:
        raise ValueError(f"action_noise must be >= 0, got {action_noise}")
    if takeover is not None and (network is None or not 0 <= takeover[0] <= takeover[1]):
        raise ValueError(f"takeover needs a network and 0 <= low <= high, got {takeover}")
    obs = venv.reset()
    current = list(venv.reset_infos)  # info of each env's current observation
    buffers: dict[str, list[np.ndarray]] = {k: [] for k in obs}
    actions_l, xy_l, ref_xy_l, rewards_l, dones_l, kept_l = [], [], [], [], [], []
    passed_l: list[tuple[int, int, dict, np.ndarray]] = []  # (decision row, env, the chunk's passed states, ref xy)
    reference_xy = np.stack([info[TARGET_XY] for info in current])  # each env's episode-start target position
    finished = successes = 0
    decisions = np.zeros(venv.num_envs, dtype=np.int64)  # decisions so far in each env's episode

    def draw_switch(count: int) -> np.ndarray:
        return rng.integers(takeover[0], takeover[1] + 1, size=count) if takeover else np.zeros(count, np.int64)

    switch_at = draw_switch(venv.num_envs)
    with tqdm(total=episodes, desc=desc, leave=False) as bar:
        while finished < episodes:
            for k, v in obs.items():
                buffers[k].append(v.astype(np.float16))
            labels = np.stack([info[EXPERT_ACTION] for info in current]).astype(np.float32)
            actions_l.append(labels)
            xy_l.append(np.stack([info[TARGET_XY] for info in current]))
            ref_xy_l.append(reference_xy.copy())
            act = np.clip(labels, -1, 1)
            if action_noise > 0:
                act = np.clip(act + rng.normal(0.0, action_noise, act.shape), -1, 1).astype(np.float32)
            if takeover is not None:
                learner, _ = network.predict(obs, deterministic=True)
                use_learner = decisions < switch_at
                act = np.where(use_learner[:, None], learner, act)
                kept_l.append(~use_learner)
            elif network is not None and beta < 1.0:
                learner, _ = network.predict(obs, deterministic=True)
                use_learner = rng.random(len(act)) >= beta
                act = np.where(use_learner[:, None], learner, act)
            obs, rewards, dones, infos = venv.step(act)
            rewards_l.append(rewards.astype(np.float32))
            dones_l.append(dones.astype(np.float32))
            if passed_states:
                for i, info in enumerate(infos):
                    if info.get(CHUNK_STEPS):  # states of the episode this step belonged to, so its reference
                        states = dict(info[CHUNK_STEPS])  # kept as float16, as the decisions are (half the memory)
                        states["obs"] = {k: v.astype(np.float16) for k, v in states["obs"].items()}
                        passed_l.append((len(rewards_l) - 1, i, states, reference_xy[i].copy()))
            current = [venv.reset_infos[i] if dones[i] else infos[i] for i in range(len(infos))]
            decisions += 1
            for i in np.flatnonzero(dones):
                reference_xy[i] = current[i][TARGET_XY]
                decisions[i] = 0
                switch_at[i] = draw_switch(1)[0]
                finished += 1
                successes += int(bool(infos[i].get("is_success", False)))
                bar.update(1)
    returns = _discounted_returns(rewards_l, dones_l, gamma)
    flat_kept = np.stack(kept_l).reshape(-1) if takeover is not None else None  # the expert drove this step

    def flat(arr: np.ndarray) -> np.ndarray:  # (T, E, ...) -> (T*E, ...), the kept steps only
        out = arr.reshape(-1, *arr.shape[2:])
        return out if flat_kept is None else out[flat_kept]

    obs_out = {k: flat(np.stack(v)) for k, v in buffers.items()}
    actions_out, xy_out = flat(np.stack(actions_l)), flat(np.stack(xy_l))
    returns_out, ref_out = flat(returns), flat(np.stack(ref_xy_l))
    if passed_l:
        counts = [len(states[TARGET_XY]) for _, _, states, _ in passed_l]
        obs_out = {k: np.concatenate([v] + [states["obs"][k] for _, _, states, _ in passed_l])
                   for k, v in obs_out.items()}
        actions_out = np.concatenate([actions_out] + [states[EXPERT_ACTION] for _, _, states, _ in passed_l])
        xy_out = np.concatenate([xy_out] + [states[TARGET_XY] for _, _, states, _ in passed_l])
        returns_out = np.concatenate([returns_out, np.repeat([returns[t, i] for t, i, _, _ in passed_l], counts)])
        ref_out = np.concatenate([ref_out, np.repeat(np.stack([r for *_, r in passed_l]), counts, axis=0)])
    return Demonstrations(
        obs=obs_out,
        expert_actions=np.clip(actions_out, -1, 1),
        target_xy=xy_out,
        returns=returns_out.astype(np.float32),
        successes=successes,
        episodes=finished,
        reference_xy=ref_out,
        decisions_run=len(actions_l) * venv.num_envs,
    )


def region_maps(network, data: Demonstrations, batch_size: int = 256) -> RegionMaps | None:
    """Every sample's fusion maps (:meth:`FusionFeaturesExtractor.region_maps`), or None where they are not fixed.

    A ``region_map`` fusion computes its maps from the CLIP embeddings before any parameter a fit trains (its
    object locator is frozen), and they cost most of a fit's time (two region-text similarities over every patch
    pair and the locator's per-patch MLP): :func:`fit` computes them once instead of once per epoch. The fit is
    the same (``tests/test_imitation_maps.py``).
    """
    extractor = network.features_extractor
    if not getattr(extractor, "fixed_maps", False):
        return None
    device = next(network.parameters()).device
    keys = [k for k in (FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES, FEAT_TEXT) if k in data.obs]
    parts = []
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        obs = {k: torch.as_tensor(data.obs[k][rows], dtype=torch.float32, device=device) for k in keys}
        parts.append(extractor.region_maps(obs))
    return RegionMaps(*(None if part[0] is None else torch.cat(part) for part in zip(*parts)))


def batch_losses(network, data: Demonstrations, idx: np.ndarray, value_detached: bool = False,
                 maps: RegionMaps | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(action MSE, value MSE, grounding MSE) of ``network`` on the demonstrations' rows ``idx`` (:func:`fit`).

    ``value_detached``: the value loss reaches the critic's own layers only, not the features it shares with the
    actor (the fusion). ``maps``: every sample's :func:`region_maps` (the patches are then not read).
    """
    device = next(network.parameters()).device
    skip = (FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES) if maps is not None else ()
    obs = {k: torch.as_tensor(v[idx], dtype=torch.float32, device=device) for k, v in data.obs.items()
           if k not in skip}
    target = torch.as_tensor(data.expert_actions[idx], device=device)
    returns = torch.as_tensor(data.returns[idx], device=device)
    target_xy = torch.as_tensor(data.target_xy[idx], device=device)
    reference_xy = torch.as_tensor(data.reference_xy[idx], device=device) if data.reference_xy is not None else None
    batch_maps = None if maps is None else maps.select(torch.as_tensor(idx, device=maps.current.device))
    features, grounding = network.features_extractor.extract(obs, batch_maps)  # Box observations: no preprocessing
    if value_detached:
        latent_pi = network.mlp_extractor.forward_actor(features)
        latent_vf = network.mlp_extractor.forward_critic(features.detach())
    else:
        latent_pi, latent_vf = network.mlp_extractor(features)
    mean = network.action_net(latent_pi)
    values = network.value_net(latent_vf).squeeze(-1)
    action_loss = F.mse_loss(mean, target)
    value_loss = F.mse_loss(values, returns)
    grounding_loss = F.mse_loss(grounding.xy, target_xy) if grounding.xy is not None else torch.zeros((), device=device)
    if grounding.reference_xy is not None and reference_xy is not None:
        grounding_loss = grounding_loss + F.mse_loss(grounding.reference_xy, reference_xy)
    return action_loss, value_loss, grounding_loss


def add_clipped_gradients(params: list[torch.Tensor], grads, max_norm: float = math.inf) -> None:
    """Add ``grads`` (one per parameter, None where unused), scaled to a total norm of at most ``max_norm``."""
    present = [g for g in grads if g is not None]
    if not present:
        return
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in present]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g * scale if p.grad is None else p.grad + g * scale


def set_gradients(network, data: Demonstrations, idx: np.ndarray, params: list[torch.Tensor], value_weight: float,
                  grounding_weight: float, value_detached: bool = False, clip_apart: bool = False,
                  maps: RegionMaps | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set ``params``' gradients (zeroed before) for one step of :func:`fit`; returns :func:`batch_losses`.

    The gradient is clipped to a total norm of 1, or with ``clip_apart`` the value loss's gradient and the
    actions' (with the grounding loss's) are clipped to 1 each and then added.
    """
    action_loss, value_loss, grounding_loss = batch_losses(network, data, idx, value_detached, maps)
    if clip_apart:
        value_grads = torch.autograd.grad(value_weight * value_loss, params, retain_graph=True, allow_unused=True)
        (action_loss + grounding_weight * grounding_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        add_clipped_gradients(params, value_grads, 1.0)
    else:
        (action_loss + value_weight * value_loss + grounding_weight * grounding_loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    return action_loss, value_loss, grounding_loss


LR_SCHEDULES = ("constant", "cosine")


def fit(network, data: Demonstrations, epochs: int, batch_size: int, lr: float, seed: int,
        value_weight: float = 0.5, grounding_weight: float = 1.0, value_detached: bool = False,
        clip_apart: bool = False, lr_schedule: str = "constant") -> dict[str, float]:
    """Regress the actor mean on expert actions and the value head on observed returns.

    Each step's gradient is clipped to a total norm of 1 (:func:`set_gradients`). ``clip_apart`` clips the value
    loss's gradient and the actions' apart and then adds them, so returns whose error is hundreds of times the
    actions' cannot set the direction of the layers the critic shares with the actor (the fusion) alone; in the
    push probe it was no reliable cure for what the value loss costs (docs/EXPERIMENT_LOG.md, 2026-12-07,
    sixteenth session).

    ``lr_schedule`` "cosine" anneals the learning rate from ``lr`` to 0 over the fit's steps, so the weights a fit
    ends with are not one draw from Adam's noise at full step size; "constant" keeps ``lr`` throughout.

    Fusions that attend over patches also regress their attention's expected position on the
    commanded object's image position (an auxiliary grounding loss from simulator state; at run
    time the network sees only camera, command and proprioception); reference-frame fusions regress
    their reference attention on the object's position in the episode's first frame likewise.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    params = [p for name, p in network.named_parameters() if name != "log_std"]
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    optimizer = torch.optim.Adam(params, lr=lr)
    n = len(data)
    total_steps = max(1, epochs * math.ceil(n / batch_size))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        if lr_schedule == "cosine" else 1.0)
    maps = region_maps(network, data)  # once, not once per epoch, where no parameter trained changes them
    network.train()
    losses = {}
    for _ in tqdm(range(epochs), desc="behaviour cloning", leave=False):
        order = rng.permutation(n)
        totals = np.zeros(3)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad()
            action_loss, value_loss, grounding_loss = set_gradients(network, data, idx, params, value_weight,
                                                                    grounding_weight, value_detached, clip_apart,
                                                                    maps)
            optimizer.step()
            scheduler.step()
            totals += [action_loss.item() * len(idx), value_loss.item() * len(idx), grounding_loss.item() * len(idx)]
        losses = {"action_mse": totals[0] / n, "value_mse": totals[1] / n, "grounding_mse": totals[2] / n}
    network.eval()
    return losses
