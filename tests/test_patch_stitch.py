"""Shift-and-stitch patch tokens (``patch_stitch``): encoder, region_map fusion, training, Policy, ONNX."""

import json

import numpy as np
import pytest
import torch
from frame_graph import second_frame_actions

from vla_ros.commands.export import sample_inputs
from vla_ros.grounding.encoder import ClipEncoder, vision_forward
from vla_ros.grounding.fusion import build_fusion, gaussian_pooling
from vla_ros.keys import FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES
from vla_ros.paths import share_path
from vla_ros.policy.checkpoint import CheckpointError
from vla_ros.policy.export import export_onnx, parity_report
from vla_ros.policy.policy import ONNX_DIR, Policy

CLIP = share_path("models", "policy", "clip")  # 64 px input, 8 px patches


@pytest.fixture(scope="module")
def encoders():
    return ClipEncoder.from_pretrained(CLIP), ClipEncoder.from_pretrained(CLIP, patch_stitch=2)


def _shifted(frames: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The frames with the content at (y + dy, x + dx) moved to (y, x), edges repeated."""
    pad = np.pad(frames, ((0, 0), (max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0)), (0, 0)), mode="edge")
    size = frames.shape[1]
    return np.ascontiguousarray(pad[:, max(dy, 0):max(dy, 0) + size, max(dx, 0):max(dx, 0) + size])


def test_stitched_tokens_are_the_half_patch_shifted_views_interleaved(encoders):
    plain, stitched = encoders
    assert (plain.grid_size, plain.num_patches) == ((8, 8), 64)
    assert (stitched.grid_size, stitched.num_patches) == ((16, 16), 256)
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    features = stitched.encode_images(frames)
    grid = features.patches.reshape(2, 16, 16, -1)
    pooled = []
    # 8 px patches: views shifted by -2 and +2 px put token centres at 2, 6, 10, ... px: one every 4 px
    for row, dy in enumerate((-2, 2)):
        for col, dx in enumerate((-2, 2)):
            view = plain.encode_images(_shifted(frames, dy, dx))
            assert torch.allclose(grid[:, row::2, col::2], view.patches.reshape(2, 8, 8, -1), atol=1e-5)
            with torch.inference_mode():
                pooled.append(vision_forward(plain.model.visual, plain.preprocess(_shifted(frames, dy, dx)))[0])
    assert features.patches.shape == (2, 256, plain.embed_dim)
    # the global embedding is the views' mean pooled embedding, normalised
    expected = torch.nn.functional.normalize(torch.stack(pooled).mean(0), dim=-1)
    assert torch.allclose(features.global_embedding, expected, atol=1e-5)


def test_a_bad_patch_stitch_is_a_clear_error():
    for bad in (0, 3, 8):  # 3 and 8 do not shift 8 px patches by whole pixels evenly
        with pytest.raises(ValueError, match="patch_stitch"):
            ClipEncoder.from_pretrained(CLIP, patch_stitch=bad)
    with pytest.raises(ValueError, match="region_map"):
        build_fusion("cross_attention", embed_dim=128, num_patches=256, grid_size=(16, 16), patch_stitch=2)


def test_region_map_keeps_its_radii_in_clip_patches_on_a_stitched_grid():
    plain = build_fusion("region_map", embed_dim=128, num_patches=64, grid_size=(8, 8), peak_window=1.5)
    dense = build_fusion("region_map", embed_dim=128, num_patches=256, grid_size=(16, 16), peak_window=1.5,
                         patch_stitch=2)
    assert torch.allclose(dense.pooling, gaussian_pooling(16, 16, 2 * plain.DEFAULT_SIGMA_PATCHES))
    assert dense.peak_window == 2 * plain.peak_window
    # one matching token: the peak estimate lands on it at either grid density
    for fusion, grid, cell in ((plain, 8, 2 * 8 + 5), (dense, 16, 5 * 16 + 11)):
        text = torch.nn.functional.normalize(torch.randn(1, 128, generator=torch.Generator().manual_seed(1)), dim=-1)
        patches = torch.nn.functional.normalize(torch.randn(1, grid * grid, 128), dim=-1) * 0.1
        patches[0, cell] = text[0]
        _, _, estimate = fusion._readout(fusion.logits(patches, text))
        assert torch.allclose(estimate[0], fusion.coordinates[cell], atol=0.1)  # a CLIP patch is 0.25 wide


@pytest.fixture(scope="module")
def stitched_checkpoint(tmp_path_factory):
    """A few hundred steps of `vla-ros train` with patch_stitch 2: enough to check the plumbing.

    The MLP reads the estimates and a projection of the command (the push recipe's inputs), so the graph and
    ONNX checks below also cover that path.
    """
    from vla_ros.policy.train import TrainConfig, TrainingRun

    out = tmp_path_factory.mktemp("stitch") / "run"
    cfg = TrainConfig(out=str(out), clip=str(CLIP), fusion="region_map", reference_frame=True, peak_window=1.5,
                      patch_stitch=2, map_weights=False, text_features=4, num_envs=2, vec_env="dummy",
                      bc_episodes=2, dagger_rounds=0, bc_epochs=1,
                      ppo_steps=64, n_steps=32, batch_size=32, n_epochs=1, eval_every=10_000, eval_episodes=2,
                      checkpoint_every=10_000, command="pytest")
    return TrainingRun(cfg).run()


def test_training_records_the_stitch_and_feeds_the_dense_grid(stitched_checkpoint):
    from vla_ros.policy.imitation import Demonstrations

    config = json.loads((stitched_checkpoint / "config.json").read_text())
    assert config["network"]["patch_stitch"] == 2 and config["network"]["grid_size"] == [16, 16]
    assert config["clip"]["num_patches"] == 256
    demos = Demonstrations.load(stitched_checkpoint.parent / "demos_0.npz")
    assert demos.obs[FEAT_IMAGE_PATCHES].shape[1:] == demos.obs[FEAT_REFERENCE_PATCHES].shape[1:] == (256, 128)
    policy = Policy.load(stitched_checkpoint)
    assert policy.encoder.patch_stitch == 2 and policy.encoder.grid_size == (16, 16)
    assert config["network"]["text_features"] == 4 and config["network"]["map_weights"] is False
    assert policy.network.features_extractor.fusion.text_projection.out_features == 4


def test_the_per_frame_graph_and_onnx_stitch_like_the_policy(stitched_checkpoint):
    policy = Policy.load(stitched_checkpoint)
    action, patches, expected = second_frame_actions(policy, seed=4)
    assert patches.shape == (1, 256, 128)
    assert np.allclose(action.numpy()[0], expected, atol=1e-5)
    frames, commands, states = sample_inputs(policy, 3, seed=4)
    files = export_onnx(policy, stitched_checkpoint / ONNX_DIR)
    report = parity_report(policy, files, frames, commands, states)
    assert report["actions_match"], report
    onnx_policy = Policy.load(stitched_checkpoint, backend="onnxruntime")
    policy.reset()
    for frame, state in zip(frames, states):
        assert np.allclose(policy.normalized_action(frame, commands[0], state),
                           onnx_policy.normalized_action(frame, commands[0], state), atol=1e-4)


def test_a_checkpoint_whose_grid_does_not_match_its_stitch_is_refused(stitched_checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "policy"
    shutil.copytree(stitched_checkpoint, broken, ignore=shutil.ignore_patterns(ONNX_DIR))
    config = json.loads((broken / "config.json").read_text())
    config["clip"]["path"] = str(CLIP)
    config["network"]["patch_stitch"] = 1  # weights and observation space for 256 tokens, encoder gives 64
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="patch sizes do not match"):
        Policy.load(broken)
