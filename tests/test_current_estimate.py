"""``current_estimate``: a reference-prior region_map also gives its MLP the current frame's own estimate."""

from __future__ import annotations

import numpy as np
import pytest

from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError


def test_current_estimate_is_a_validated_option_and_old_configs_lack_it():
    config = NetworkConfig(fusion="region_map", reference_frame=True, reference_prior=True, current_estimate=True)
    assert NetworkConfig.from_dict(config.to_dict()).current_estimate
    assert not NetworkConfig.from_dict({"fusion": "region_map"}).current_estimate  # checkpoints made before it
    with pytest.raises(NetworkConfigError, match="current_estimate needs reference_prior"):
        NetworkConfig(fusion="region_map", reference_frame=True, current_estimate=True)


def test_a_policy_with_the_current_estimate_trains_acts_and_its_done_inputs_carry_it(tmp_path):
    """A real (tiny) `vla-ros train`; the Policy vla_node runs reads the extra estimate, and so can a done head."""
    import torch

    from vla_ros.cli import main
    from vla_ros.commands.export import sample_inputs
    from vla_ros.keys import OBS_PROPRIO
    from vla_ros.paths import share_path
    from vla_ros.policy.done_head import done_input_dim, done_inputs, estimate_columns
    from vla_ros.policy.model_card import render
    from vla_ros.policy.policy import Policy

    out = tmp_path / "run"
    assert main(["train", "--task", "reach", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                 "--reference-frame", "--reference-prior", "--current-estimate", "--peak-window", "1.5",
                 "--no-map-weights", "--bc-episodes", "2", "--dagger-rounds", "0", "--bc-epochs", "1",
                 "--ppo-steps", "0", "--eval-episodes", "1", "--num-envs", "1", "--vec-env", "dummy",
                 "--fusion-dim", "32", "--hidden-dim", "32", "--out", str(out)]) == 0
    policy = Policy.load(out / "final")
    fusion = policy.network.features_extractor.fusion
    assert policy.config["network"]["current_estimate"] and fusion.current_estimate
    assert fusion.mlp[0].in_features == 3 * 4  # mean and peak: current with prior, reference, current alone
    assert "the MLP also reads the current frame's own estimate" in render(out / "final", None)
    frames, commands, states = sample_inputs(policy, 2, seed=3)
    actions = [policy.normalized_action(f, c, s) for f, c, s in zip(frames, commands, states)]
    assert all(np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1) for a in actions)
    observations = {k: v.float() for k, v in policy.last_features.items()}
    features, fused = policy.network.features_extractor.extract(observations)
    assert fused.current_xy is not None and fused.current_xy.shape == (1, 2)
    inputs = done_inputs(policy.network, features, fused, observations, "estimates")
    proprio = observations[OBS_PROPRIO].shape[-1]
    assert inputs.shape == (1, done_input_dim(policy.network, "estimates")) == (1, 2 + 4 + 4 + proprio)
    assert torch.allclose(inputs[0, 8:10], fused.current_xy[0] - fused.reference_xy[0])
    moved = done_inputs(policy.network, features, fused, observations, "moved")
    assert moved.shape == (1, done_input_dim(policy.network, "moved")) == (1, 2 + 4 + 4 + 4 + proprio)
    assert torch.allclose(moved[0, 10:12], fused.frame_xy[0]) and torch.equal(fused.frame_xy, fused.current_xy)
    for kind, row, current in (("estimates", inputs[0], fused.xy[0]), ("moved", moved[0], fused.frame_xy[0])):
        first, now = estimate_columns(len(row), kind, proprio, skills=0)  # what done_rule_probe reads
        assert torch.equal(row[first], fused.reference_xy[0]) and torch.equal(row[now], current)
