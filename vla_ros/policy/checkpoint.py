"""Policy checkpoints: ``policy.safetensors`` + ``config.json``; loading never unpickles.

``config.json`` holds everything needed to rebuild the network and use it on a robot: the fusion
and network configuration, joint names and order, action units and scaling, proprioception
normalisation, the CLIP checkpoint it was trained on (path relative to the checkpoint and sha256),
the training command and metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

from vla_ros.policy.features import FusionFeaturesExtractor, clip_feature_space
from vla_ros.policy.network_config import MAX_GRID, MAX_WIDTH, NetworkConfig, NetworkConfigError

FORMAT = "vla_ros.policy/1"
WEIGHTS_FILE = "policy.safetensors"
CONFIG_FILE = "config.json"
MAX_CONFIG_BYTES = 1 << 20  # a policy config is a few kB; refuse anything huge before parsing it
_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


class CheckpointError(ValueError):
    """A policy checkpoint is missing, malformed or does not match what it is used with."""


def policy_kwargs(net: dict[str, Any] | NetworkConfig, source: str = "network config") -> dict[str, Any]:
    """SB3 ``policy_kwargs`` for the network section of a checkpoint config (validated first)."""
    network = net if isinstance(net, NetworkConfig) else NetworkConfig.from_dict(net, source)
    return {
        "net_arch": {"pi": list(network.net_arch_pi), "vf": list(network.net_arch_vf)},
        "activation_fn": _ACTIVATIONS[network.activation],
        "log_std_init": network.log_std_init,
        "features_extractor_class": FusionFeaturesExtractor,
        "features_extractor_kwargs": {"network": network},
    }


def build_network(config: dict[str, Any]) -> MultiInputActorCriticPolicy:
    """Build the (untrained) actor-critic network a checkpoint config describes."""
    import gymnasium as gym

    clip, n = config["clip"], len(config["joint_names"])
    network = NetworkConfig.from_dict(config["network"])
    obs_space = clip_feature_space(int(clip["embed_dim"]), int(clip["num_patches"]), 2 * n,
                                   reference_frame=network.reference_frame,
                                   sentence_dim=0 if network.skill_reader_tokens else network.skill_reader_width,
                                   skill_logits=network.skill_reader_tokens)
    # a chunked policy's action is its next action_chunk joint-delta actions, flattened (vla_ros.policy.action_chunk)
    act_space = gym.spaces.Box(-1.0, 1.0, shape=(n * network.action_chunk,), dtype=np.float32)
    return MultiInputActorCriticPolicy(obs_space, act_space, lr_schedule=lambda _: 0.0,
                                       **policy_kwargs(network))


def save_checkpoint(out_dir: str | Path, network: torch.nn.Module, config: dict[str, Any]) -> Path:
    """Write weights (safetensors) and config (JSON) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_model(network, str(out / WEIGHTS_FILE))  # handles the extractor shared by actor and critic
    (out / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **config}, indent=2) + "\n")
    return out


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint's ``config.json``."""
    folder = Path(path)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"policy checkpoint folder not found: {folder}")
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{folder} is not a policy checkpoint: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{config_path}: {config_path.stat().st_size} bytes; a config is at most "
                              f"{MAX_CONFIG_BYTES}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config_path}: invalid JSON or not UTF-8: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
    for key in ("joint_names", "action", "proprio_normalization", "clip", "network"):
        if key not in config:
            raise CheckpointError(f"{config_path}: missing {key!r}")
    # the network's sizes are bounded and its numbers finite before anything is allocated
    try:
        network = NetworkConfig.from_dict(config["network"], str(config_path))
    except NetworkConfigError as exc:
        raise CheckpointError(str(exc)) from None
    clip = config["clip"]
    for key, high in (("embed_dim", MAX_WIDTH), ("num_patches", MAX_GRID * MAX_GRID)):
        value = clip.get(key) if isinstance(clip, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise CheckpointError(f"{config_path}: clip.{key} must be an integer in [1, {high}], got "
                                  f"{str(value)[:40]!r}")
    if not isinstance(clip.get("path"), str) or not clip["path"].strip():
        raise CheckpointError(f"{config_path}: clip.path must be the CLIP folder (relative to the checkpoint), got "
                              f"{str(clip.get('path'))[:40]!r}")
    if clip["num_patches"] != network.num_patches:
        raise CheckpointError(f"{config_path}: clip.num_patches {clip['num_patches']} does not match "
                              f"network.grid_size {list(network.grid_size)}")
    try:
        network.check_embed_dim(clip["embed_dim"])
    except NetworkConfigError as exc:
        raise CheckpointError(str(exc)) from None
    _check_numbers(config, config_path)
    n = len(config["joint_names"])
    sizes = {f"action.{k}": len(config["action"].get(k, ())) for k in ("max_delta", "lower", "upper")}
    sizes.update({f"proprio_normalization.{k}": len(v) for k, v in config["proprio_normalization"].items()})
    wrong = {k: v for k, v in sizes.items() if v != n}
    if wrong:
        raise CheckpointError(f"{config_path}: joint set does not match: {n} joint names but {wrong}")
    return config


def _check_numbers(config: dict[str, Any], config_path: Path) -> None:
    """The action scaling and the proprioception normalisation: lists of finite numbers, in range.

    A NaN ``max_delta`` or a zero half-range would make every action NaN (the node would never move, or
    worse); they are refused here, naming the file and the field.
    """
    action, norm = config["action"], config["proprio_normalization"]
    if not isinstance(config["joint_names"], list) or not all(isinstance(j, str) for j in config["joint_names"]):
        raise CheckpointError(f"{config_path}: joint_names must be a list of strings")
    if not isinstance(action, dict) or not isinstance(norm, dict):
        raise CheckpointError(f"{config_path}: action and proprio_normalization must be objects")

    def numbers(section: dict, field: str, where: str, positive: bool = False) -> np.ndarray:
        values = section.get(field)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in values):
            raise CheckpointError(f"{config_path}: {where}.{field} must be a list of numbers")
        array = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(array)):
            raise CheckpointError(f"{config_path}: {where}.{field} holds a NaN or infinite value")
        if positive and not np.all(array > 0):
            raise CheckpointError(f"{config_path}: {where}.{field} must be > 0 for every joint")
        return array

    numbers(action, "max_delta", "action", positive=True)
    lower, upper = numbers(action, "lower", "action"), numbers(action, "upper", "action")
    if lower.shape == upper.shape and not np.all(lower < upper):
        raise CheckpointError(f"{config_path}: action.lower must be below action.upper for every joint")
    numbers(norm, "position_center", "proprio_normalization")
    numbers(norm, "position_half_range", "proprio_normalization", positive=True)
    numbers(norm, "velocity_scale", "proprio_normalization", positive=True)


def load_network(path: str | Path, config: dict[str, Any] | None = None,
                 device: str = "cpu") -> tuple[MultiInputActorCriticPolicy, dict[str, Any]]:
    """Rebuild the network from ``config.json`` and load the safetensors weights (strict)."""
    config = config or read_config(path)
    network = build_network(config)
    try:
        missing, unexpected = load_model(network, str(Path(path) / WEIGHTS_FILE), strict=False)
    except RuntimeError as exc:  # torch's size mismatch
        raise CheckpointError(f"{path}: weights do not match the config: {str(exc)[:300]}") from exc
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{Path(path) / WEIGHTS_FILE}: cannot read weights: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")
    return network.to(device).eval(), config


def resolve_clip_path(checkpoint: str | Path, config: dict[str, Any]) -> Path:
    """The CLIP checkpoint folder a policy config refers to (relative to the policy folder)."""
    return (Path(checkpoint) / config["clip"]["path"]).resolve()


def copy_checkpoint(src: str | Path, dst: str | Path, clip_dir: str | Path) -> Path:
    """Copy a checkpoint folder (e.g. a run's ``final`` into ``models/``), pointing it at ``clip_dir``.

    The CLIP folder must hold the very weights the policy was trained with (sha256 checked).
    """
    from vla_ros.grounding.checkpoint import sha256_file

    src, dst, clip_dir = Path(src), Path(dst), Path(clip_dir)
    config = read_config(src)
    actual = sha256_file(clip_dir / "open_clip_model.safetensors")
    if config["clip"].get("sha256") and actual != config["clip"]["sha256"]:
        raise CheckpointError(f"{clip_dir} is not the CLIP {src} was trained with")
    return _write_repointed(src, dst, config, clip_dir)


def rebind_clip(src: str | Path, dst: str | Path, clip_dir: str | Path) -> Path:
    """Copy checkpoint ``src`` to ``dst`` pointing at ``clip_dir``, a CLIP with the very image tower of ``src``'s.

    Its text projection may differ (``train-clip --trainable text_projection``); its image tower must be the
    one ``src`` was trained with, bit for bit. The policy reads the image tower's patch features and the
    command's similarity to them: with the same image tower, a text projection that places new words better
    serves the same network. The new CLIP's hash is recorded; ``clip.rebound_from`` keeps the old one.
    """
    import torch
    from safetensors.torch import load_file

    from vla_ros.grounding.checkpoint import sha256_file

    src, dst, clip_dir = Path(src), Path(dst), Path(clip_dir)
    config = read_config(src)
    old_dir = resolve_clip_path(src, config)
    old = load_file(str(old_dir / "open_clip_model.safetensors"))
    new = load_file(str(clip_dir / "open_clip_model.safetensors"))
    visual = sorted(k for k in old if k.startswith("visual."))
    if not visual or visual != sorted(k for k in new if k.startswith("visual.")) or \
            not all(torch.equal(old[k], new[k]) for k in visual):
        raise CheckpointError(f"{clip_dir}: its image tower is not the one {src} was trained with ({old_dir})")
    config["clip"]["rebound_from"] = config["clip"].get("sha256")
    config["clip"]["sha256"] = sha256_file(clip_dir / "open_clip_model.safetensors")
    return _write_repointed(src, dst, config, clip_dir)


def _write_repointed(src: Path, dst: Path, config: dict[str, Any], clip_dir: Path) -> Path:
    """Copy ``src``'s weights to ``dst`` and write ``config`` there with its CLIP path relative to ``dst``."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / WEIGHTS_FILE, dst / WEIGHTS_FILE)
    config["clip"]["path"] = os.path.relpath(clip_dir.resolve(), dst.resolve())
    (dst / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return dst
