"""``object_locator``: a learned, frozen map of the commanded object in the region_map fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_ros.grounding.fusion import build_fusion
from vla_ros.grounding.object_locator import fit_object_locator
from vla_ros.paths import share_path
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError


def _fusion(**extra):
    return build_fusion("region_map", embed_dim=16, num_patches=64, out_dim=8, hidden_dim=12, grid_size=(8, 8),
                        peak_window=1.5, map_weights=False, object_locator=True, **extra)


def test_object_locator_is_a_validated_region_map_option_and_old_configs_lack_it():
    config = NetworkConfig(fusion="region_map", reference_frame=True, object_locator=True)
    assert NetworkConfig.from_dict(config.to_dict()).object_locator
    assert config.fusion_kwargs()["object_locator"] is True
    old = NetworkConfig.from_dict({"fusion": "region_map", "reference_frame": True})  # checkpoints made before it
    assert not old.object_locator and "object_locator" not in old.fusion_kwargs()
    with pytest.raises(NetworkConfigError, match="object_locator is an option of the region_map fusion"):
        NetworkConfig(fusion="cross_attention", object_locator=True)
    with pytest.raises(NetworkConfigError, match="needs reference_frame"):
        NetworkConfig(fusion="region_map", object_locator=True)
    with pytest.raises(NetworkConfigError, match="replaces reference_prior"):
        NetworkConfig(fusion="region_map", reference_frame=True, reference_prior=True, object_locator=True)
    with pytest.raises(NetworkConfigError, match="object_locator"):
        NetworkConfig(fusion="region_map", reference_frame=True, object_locator=1)
    with pytest.raises(ValueError, match="object_locator needs reference_frame"):
        _fusion()
    with pytest.raises(ValueError, match="replaces reference_prior"):
        _fusion(reference_frame=True, reference_prior=True)


def test_the_locator_is_frozen_and_its_map_is_what_the_fusion_reads():
    torch.manual_seed(0)
    fusion = _fusion(reference_frame=True)
    assert all(not p.requires_grad for p in fusion.object_locator.parameters())
    glob, text = torch.randn(3, 16), torch.randn(3, 16)
    patches, reference = torch.randn(3, 64, 16), torch.randn(3, 64, 16)
    out = fusion.fuse(glob, patches, text, reference)
    logits = fusion.object_locator(patches, text, fusion.standardised(patches, text),
                                   fusion.standardised(reference, text), fusion.coordinates)
    assert torch.allclose(out.xy, fusion.readout_estimate(logits), atol=1e-6)
    assert torch.allclose(out.attention, torch.softmax(logits, -1), atol=1e-6)
    assert torch.equal(out.frame_xy, out.xy)  # what a done head reads as the object's displacement
    # the temperature, which imitation trains, does not change what the locator reads
    with torch.no_grad():
        fusion.log_temperature.add_(1.0)
    assert torch.allclose(fusion.fuse(glob, patches, text, reference).xy, out.xy, atol=1e-5)


def test_the_fit_learns_to_hold_a_covered_object_where_the_first_frame_showed_it():
    """In this frame the object is covered and a lookalike elsewhere (the arm, to CLIP) matches the command best, so
    the map jumps to it; the first frame showed the object, which has not moved."""
    rng = np.random.default_rng(0)
    n, grid = 1200, 8
    text = rng.normal(size=(n, 16)).astype(np.float32)
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    rows = np.arange(n)
    cell = rng.integers(0, grid * grid, size=n)
    lookalike = (cell + rng.integers(9, grid * grid - 9, size=n)) % (grid * grid)  # more than a row away
    references = 0.05 * rng.normal(size=(n, grid * grid, 16)).astype(np.float32)
    references[rows, cell] += unit
    patches = 0.05 * rng.normal(size=(n, grid * grid, 16)).astype(np.float32)
    patches[rows, lookalike] += unit
    target_xy = ((np.stack([cell % grid, cell // grid], axis=1) + 0.5) / grid * 2 - 1).astype(np.float32)
    torch.manual_seed(0)
    fusion = _fusion(reference_frame=True)
    fit = fit_object_locator(fusion, patches, references, text, target_xy, epochs=10, seed=0)
    assert fit.heldout_samples == 120
    assert fit.map_share_jumps > 0.9 and fit.median_error < 0.1 and fit.share_jumps < 0.1, fit
    assert all(not p.requires_grad for p in fusion.object_locator.parameters())


def test_an_object_locator_checkpoint_trains_saves_loads_and_exports(tmp_path):
    """A real (tiny) `vla-ros train` with the locator: fitted on the expert's demonstrations, stored, and the same
    actions through torch and ONNX."""
    from safetensors.torch import load_file

    from vla_ros.cli import main
    from vla_ros.commands.export import sample_inputs
    from vla_ros.policy.export import export_onnx, parity_report
    from vla_ros.policy.policy import ONNX_DIR, Policy

    out = tmp_path / "run"
    assert main(["train", "--task", "mixed", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                 "--reference-frame", "--no-map-weights", "--peak-window", "1.5", "--object-locator",
                 "--object-locator-epochs", "1", "--bc-episodes", "2", "--dagger-rounds", "0",
                 "--bc-epochs", "1", "--ppo-steps", "0", "--eval-episodes", "1", "--num-envs", "1",
                 "--vec-env", "dummy", "--fusion-dim", "32", "--hidden-dim", "32", "--out", str(out)]) == 0
    policy = Policy.load(out / "final")
    fusion = policy.network.features_extractor.fusion
    assert policy.config["network"]["object_locator"] and fusion.object_locator is not None
    fit = policy.config["metrics"]["object_locator_heldout"]
    assert fit["heldout_samples"] >= 1 and np.isfinite(fit["median_error"]) and np.isfinite(fit["map_median_error"])
    stored = load_file(str(out / "final" / "policy.safetensors"))
    assert any(".object_locator.mlp." in k for k in stored)
    # the fit moved the locator away from its initialisation (the same seed builds the same initial network)
    torch.manual_seed(0)
    fresh = build_fusion("region_map", embed_dim=fusion.embed_dim, num_patches=fusion.num_patches, out_dim=32,
                         hidden_dim=32, grid_size=None, reference_frame=True, object_locator=True)
    trained = fusion.object_locator.state_dict()
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.object_locator.state_dict().items())
    files = export_onnx(policy, out / "final" / ONNX_DIR)
    frames, commands, states = sample_inputs(policy, 4, seed=3)
    report = parity_report(policy, files, frames, commands, states)
    assert report["actions_match"], report


def test_object_locator_refit_fits_again_on_every_rounds_demonstrations(tmp_path):
    """`object_locator_refit`: a real tiny run with one DAgger round fits the locator twice, the second time on
    both rounds' demonstrations (the learner's own states too), and it differs from a run that fits it once."""
    from safetensors.torch import load_file

    from vla_ros.policy import imitation
    from vla_ros.policy.train import TrainConfig, TrainingRun

    def run(name, **extra):
        cfg = TrainConfig(out=str(tmp_path / name), task="mixed", clip=str(share_path("models", "clip")),
                          fusion="region_map", reference_frame=True, map_weights=False, peak_window=1.5,
                          object_locator=True, object_locator_epochs=1, num_envs=1, vec_env="dummy",
                          bc_episodes=2, dagger_rounds=1, dagger_episodes=1, bc_epochs=1, ppo_steps=0,
                          eval_episodes=1, fusion_dim=32, hidden_dim=32, command="pytest", **extra)
        training = TrainingRun(cfg)
        training.run()
        weights = load_file(str(tmp_path / name / "final" / "policy.safetensors"))
        return training.state, {k: v for k, v in weights.items() if ".object_locator." in k}

    with pytest.raises(ValueError, match="object_locator_refit .* needs object_locator"):
        TrainingRun(TrainConfig(out=str(tmp_path / "x"), object_locator_refit=True))
    refit_state, refit = run("refit", object_locator_refit=True)
    once_state, once = run("once")
    rounds = refit_state["object_locator_rounds"]
    assert sorted(rounds) == ["0", "1"] and sorted(once_state["object_locator_rounds"]) == ["0"]
    both = sum(len(imitation.Demonstrations.load(tmp_path / "refit" / f"demos_{k}.npz")) for k in (0, 1))
    first = len(imitation.Demonstrations.load(tmp_path / "refit" / "demos_0.npz"))
    # the held-out tenth is taken from all the samples the fit saw: both rounds' in the second fit
    assert rounds["0"]["heldout_samples"] == first - round(first * 0.9)
    assert rounds["1"]["heldout_samples"] == both - round(both * 0.9)
    assert refit_state["object_locator"] == rounds["1"]
    assert refit.keys() == once.keys() and any(not torch.equal(refit[k], once[k]) for k in refit)
