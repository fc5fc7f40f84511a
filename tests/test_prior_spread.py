"""``prior_spread``: the reference prior spread by a Gaussian, so a pushed object stays inside it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_ros.grounding.fusion import build_fusion, log_gaussian_window, spread_logits
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError

D, GRID = 16, 8
P = GRID * GRID


def test_prior_spread_is_a_validated_option_and_old_configs_lack_it():
    config = NetworkConfig(fusion="region_map", reference_frame=True, reference_prior=True, prior_spread=1.0)
    assert NetworkConfig.from_dict(config.to_dict()).prior_spread == 1.0
    assert NetworkConfig.from_dict({"fusion": "region_map"}).prior_spread == 0.0  # checkpoints made before it
    with pytest.raises(NetworkConfigError, match="prior_spread needs reference_prior"):
        NetworkConfig(fusion="region_map", reference_frame=True, prior_spread=1.0)
    with pytest.raises(NetworkConfigError, match="prior_spread"):
        NetworkConfig(fusion="region_map", reference_frame=True, reference_prior=True, prior_spread=float("nan"))
    with pytest.raises(ValueError, match="prior_spread"):
        build_fusion("region_map", embed_dim=D, num_patches=P, reference_frame=True, prior_spread=1.0)
    with pytest.raises(ValueError, match="region_map"):
        build_fusion("cross_attention", embed_dim=D, num_patches=P, prior_spread=1.0)


def test_spread_logits_is_a_soft_maximum_over_the_window():
    window = log_gaussian_window(GRID, GRID, 1.0)
    assert torch.allclose(window.diagonal(), torch.zeros(P)) and bool((window <= 0).all())
    logits = torch.full((1, P), -5.0)
    logits[0, 3 * GRID + 3] = 5.0
    spread = spread_logits(logits, window)[0].reshape(GRID, GRID)
    assert spread[3, 3] >= 5.0 and spread[3, 4] > 4.0 > spread[3, 6]  # one patch off: e^-0.5 of the peak's weight
    assert torch.allclose(spread_logits(logits, torch.full((P, P), -1e4).fill_diagonal_(0.0)), logits)


def _scene():
    """A target that started at (row 4, column 2) and was pushed to column 4; a better match far off at (1, 6)."""
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, D), dim=-1)
    background = torch.randn(1, P, D)
    background = background - (background @ text[0])[..., None] * text[0]  # matches the command nowhere
    background = torch.nn.functional.normalize(background, dim=-1)

    def match(index: int, cosine: float) -> torch.Tensor:  # a patch whose cosine with the command is this
        return cosine * text[0] + (1 - cosine ** 2) ** 0.5 * background[0, index]

    reference, current = background.clone(), background.clone()
    reference[0, GRID * 4 + 2] = match(GRID * 4 + 2, 1.0)
    current[0, GRID * 4 + 4] = match(GRID * 4 + 4, 0.8)  # pushed, and half covered by the arm
    current[0, GRID * 1 + 6] = match(GRID * 1 + 6, 0.95)  # the arm or another object, far off, matching better
    return text, reference, current


def test_the_spread_prior_follows_a_pushed_target_that_the_map_prior_holds_back_and_still_bars_a_far_jump():
    text, reference, current = _scene()
    kwargs = dict(embed_dim=D, num_patches=P, out_dim=16, peak_window=1.5, reference_frame=True, map_weights=False)
    held = build_fusion("region_map", reference_prior=True, **kwargs).eval()
    spread = build_fusion("region_map", reference_prior=True, prior_spread=1.5, **kwargs).eval()
    free = build_fusion("region_map", **kwargs).eval()
    pushed_x, start_x = (4 + 0.5) / GRID * 2 - 1, (2 + 0.5) / GRID * 2 - 1
    with torch.no_grad():
        for fusion in (held, spread, free):
            fusion.log_temperature.fill_(np.log(4.0))
        held.reference_prior.fill_(2.0)  # about what training learns
        spread.reference_prior.fill_(2.0)
        zeros = torch.zeros(1, D)
        assert abs(held.fuse(zeros, current, text, reference).xy[0, 0] - start_x) < 0.1  # held at the start
        on_target = spread.fuse(zeros, current, text, reference).xy[0]
        assert abs(on_target[0] - pushed_x) < 0.1 and abs(on_target[1] - ((4 + 0.5) / GRID * 2 - 1)) < 0.1
        assert free.fuse(zeros, current, text, reference).xy[0, 0] > 0.5  # no prior: the jump to column 6
    assert spread.mlp[0].in_features == held.mlp[0].in_features  # the same inputs, only the prior differs


def test_a_policy_with_a_spread_prior_trains_acts_and_exports_to_onnx_with_parity(tmp_path):
    """A real (tiny) `vla-ros train`, the Policy vla_node runs, and the ONNX graphs it deploys with."""
    from vla_ros.cli import main
    from vla_ros.commands.export import sample_inputs
    from vla_ros.paths import share_path
    from vla_ros.policy.export import export_onnx, parity_report
    from vla_ros.policy.model_card import render
    from vla_ros.policy.policy import ONNX_DIR, Policy

    out = tmp_path / "run"
    assert main(["train", "--task", "reach", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                 "--reference-frame", "--reference-prior", "--prior-spread", "1.0", "--peak-window", "1.5",
                 "--patch-stitch", "2", "--no-map-weights", "--bc-episodes", "2", "--dagger-rounds", "0",
                 "--bc-epochs", "1", "--ppo-steps", "0", "--eval-episodes", "1", "--num-envs", "1",
                 "--vec-env", "dummy", "--fusion-dim", "32", "--hidden-dim", "32", "--out", str(out)]) == 0
    policy = Policy.load(out / "final")
    fusion = policy.network.features_extractor.fusion
    assert policy.config["network"]["prior_spread"] == 1.0
    assert fusion.prior_spread == 2.0  # one CLIP patch on the grid stitched twice as dense
    assert "spread by a Gaussian of 1.0 patches" in render(out / "final", None)
    frames, commands, states = sample_inputs(policy, 3, seed=3)
    actions = [policy.normalized_action(f, c, s) for f, c, s in zip(frames, commands, states)]
    assert all(np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1) for a in actions)
    files = export_onnx(policy, out / "final" / ONNX_DIR, fp16=False)
    report = parity_report(policy, files, frames, commands, states, fp16=False)
    assert report["max_abs_diff_action"] < 1e-4, report
