"""A small untrained policy checkpoint in the real format, for tests of the node and the controller (no rclpy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vla_ros.robot_description import load_robot_description

ROBOT = load_robot_description()


def make_policy_checkpoint(root: Path, **network) -> Path:
    """A small untrained policy checkpoint in the real format (tiny CLIP; ``network``: TrainConfig fields)."""
    pytest.importorskip("vla_ros.policy.policy")
    import torch

    from vla_ros.grounding.checkpoint import create_clip, save_clip_checkpoint
    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.policy.checkpoint import build_network, save_checkpoint
    from vla_ros.policy.train import TrainConfig, checkpoint_config

    clip_dir, out = root / "clip", root / "policy"
    loaded = create_clip(seed=0)
    save_clip_checkpoint(loaded.model, clip_dir, loaded.model_cfg, loaded.preprocess_cfg)
    encoder = ClipEncoder.from_pretrained(clip_dir)
    cfg = TrainConfig(out=str(root), clip=str(clip_dir), fusion_dim=32, hidden_dim=32, net_arch=(32,), **network)
    control_dt = 0.05
    config = checkpoint_config(cfg, encoder, clip_dir, ROBOT, control_dt, ROBOT.velocity * control_dt, out)
    torch.manual_seed(0)
    save_checkpoint(out, build_network(config), config)
    return out
