"""Reference-frame policies: memory of the episode's first frame through fusion, vec env, Policy, ONNX, training."""

import json
import os

import numpy as np
import pytest
import torch
from frame_graph import second_frame_actions

from vla_ros.commands.export import sample_inputs
from vla_ros.grounding.fusion import build_fusion
from vla_ros.keys import FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES
from vla_ros.paths import share_path
from vla_ros.policy.checkpoint import build_network, read_config, save_checkpoint
from vla_ros.policy.export import export_onnx, parity_report
from vla_ros.policy.policy import ONNX_DIR, Policy

B, D, P = 3, 128, 64
SHIPPED = share_path("models", "policy")


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for shape in ((B, D), (B, P, D), (B, D), (B, P, D))]


@pytest.mark.parametrize("kind", ["cross_attention", "region", "region_map"])
def test_fusion_reads_the_reference_patches_and_trains_through_them(kind):
    torch.manual_seed(0)
    fusion = build_fusion(kind, embed_dim=D, num_patches=P, out_dim=32, reference_frame=True)
    image, patches, text, reference = _inputs()
    reference.requires_grad_(True)
    out = fusion(image, patches, text, reference)
    assert out.shape == (B, 32)
    assert not torch.allclose(out, fusion(image, patches, text, torch.randn(B, P, D)))
    out.square().sum().backward()
    assert reference.grad.abs().sum() > 0
    reference_xy = fusion.fuse(image, patches, text, reference).reference_xy
    assert reference_xy.shape == (B, 2) and reference_xy.abs().max() <= 1
    with pytest.raises(ValueError, match="reference"):
        fusion(image, patches, text)


@pytest.mark.parametrize("kind", ["late", "gated"])
def test_fusions_without_a_reference_frame_refuse_one(kind):
    with pytest.raises(ValueError, match="no reference frame"):
        build_fusion(kind, embed_dim=D, num_patches=P, reference_frame=True)


def test_vec_env_keeps_each_episodes_first_frame_until_the_episode_ends():
    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
    from vla_ros.policy.envs import EXPERT_ACTION, make_vec_env
    from vla_ros.policy.proprio import ProprioNormalizer

    raw = make_vec_env("reach", 2, seed=5, vec_env="dummy", expert_labels=True)
    encoder = ClipEncoder.from_pretrained(SHIPPED / "clip")
    venv = ClipFeatureVecEnv(raw, encoder, ProprioNormalizer.from_robot(raw.envs[0].unwrapped.robot),
                             reference_frame=True)
    try:
        assert FEAT_REFERENCE_PATCHES in venv.observation_space.spaces
        obs = venv.reset()
        first = obs[FEAT_IMAGE_PATCHES].copy()
        assert np.array_equal(obs[FEAT_REFERENCE_PATCHES], first)
        infos, ended = venv.reset_infos, None
        for _ in range(60):  # the expert ends a reach episode in about 15 steps
            obs, _, dones, step_infos = venv.step(np.stack([info[EXPERT_ACTION] for info in infos]))
            infos = [venv.reset_infos[i] if dones[i] else step_infos[i] for i in range(2)]
            if dones.any():
                ended = int(np.flatnonzero(dones)[0])
                break
            assert np.array_equal(obs[FEAT_REFERENCE_PATCHES], first)  # unchanged while the arm moves in
            assert not np.array_equal(obs[FEAT_IMAGE_PATCHES], first)
        assert ended is not None
        # the finished episode's last observation keeps its reference; the new episode starts its own
        assert np.array_equal(step_infos[ended]["terminal_observation"][FEAT_REFERENCE_PATCHES], first[ended])
        assert np.array_equal(obs[FEAT_REFERENCE_PATCHES][ended], obs[FEAT_IMAGE_PATCHES][ended])
        assert not np.array_equal(obs[FEAT_REFERENCE_PATCHES][ended], first[ended])
    finally:
        venv.close()


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    """An untrained reference-frame network on the shipped CLIP: enough to check the plumbing."""
    config = read_config(SHIPPED)
    config["network"] = {**config["network"], "reference_frame": True}
    out = tmp_path_factory.mktemp("ref") / "policy"
    torch.manual_seed(0)
    network = build_network(config)
    config["clip"]["path"] = os.path.relpath((SHIPPED / "clip").resolve(), out.resolve())
    save_checkpoint(out, network, config)
    return out


def test_policy_remembers_the_first_frame_until_reset_or_a_new_command(reference_checkpoint):
    policy = Policy.load(reference_checkpoint)
    frames, commands, states = sample_inputs(policy, 3, seed=2)
    first = policy.normalized_action(frames[0], commands[0], states[0])
    later = policy.normalized_action(frames[1], commands[0], states[1])
    policy.reset()
    fresh = policy.normalized_action(frames[1], commands[0], states[1])  # frames[1] is its own reference now
    assert not np.allclose(later, fresh, atol=1e-6)
    again = policy.normalized_action(frames[0], commands[0], states[0])  # same episode: frames[1] stays the reference
    assert not np.allclose(again, first, atol=1e-6)
    other = "touch the blue cube" if commands[0] != "touch the blue cube" else "touch the red ball"
    policy.normalized_action(frames[1], other, states[1])  # a new command starts a new episode
    policy.reset()
    expected = policy.normalized_action(frames[1], other, states[1])
    policy.normalized_action(frames[2], commands[0], states[2])
    assert np.allclose(policy.normalized_action(frames[1], other, states[1]), expected, atol=1e-6)


def test_the_per_frame_computation_with_a_reference_equals_the_policy(reference_checkpoint):
    action, _, expected = second_frame_actions(Policy.load(reference_checkpoint), seed=6)
    assert np.allclose(action.numpy()[0], expected, atol=1e-5)


def test_onnx_export_of_a_reference_policy_matches_over_an_episode(reference_checkpoint):
    policy = Policy.load(reference_checkpoint)
    files = export_onnx(policy, reference_checkpoint / ONNX_DIR)
    meta = json.loads(files.metadata.read_text())
    assert meta["reference_frame"] is True
    frames, commands, states = sample_inputs(policy, 4, seed=7)
    report = parity_report(policy, files, frames, commands, states)
    assert report["actions_match"], report
    onnx_policy = Policy.load(reference_checkpoint, backend="onnxruntime")
    policy.reset()
    for frame, state in zip(frames, states):  # one command: frames[0] is the reference of every step
        a = policy.normalized_action(frame, commands[0], state)
        b = onnx_policy.normalized_action(frame, commands[0], state)
        assert np.allclose(a, b, atol=1e-4)


def test_training_with_a_reference_frame_records_it_and_exports_a_loadable_checkpoint(tmp_path):
    from vla_ros.policy.imitation import Demonstrations
    from vla_ros.policy.train import TrainConfig, TrainingRun

    cfg = TrainConfig(out=str(tmp_path / "run"), clip=str(SHIPPED / "clip"), reference_frame=True, num_envs=2,
                      vec_env="dummy", bc_episodes=2, dagger_rounds=0, bc_epochs=1, ppo_steps=64, n_steps=32,
                      batch_size=32, n_epochs=1, eval_every=10_000, eval_episodes=2, checkpoint_every=10_000)
    final = TrainingRun(cfg).run()
    assert json.loads((final / "config.json").read_text())["network"]["reference_frame"] is True
    demos = Demonstrations.load(tmp_path / "run" / "demos_0.npz")
    assert demos.obs[FEAT_REFERENCE_PATCHES].shape == demos.obs[FEAT_IMAGE_PATCHES].shape
    assert demos.reference_xy.shape == demos.target_xy.shape
    policy = Policy.load(final)
    assert policy.reference_frame
    frames, commands, states = sample_inputs(policy, 1, seed=1)
    assert np.all(np.abs(policy.normalized_action(frames[0], commands[0], states[0])) <= 1)


def test_latency_bench_switches_backends_on_a_reference_policy(reference_checkpoint, tmp_path):
    from argparse import Namespace

    from vla_ros.bench.latency import run

    report = tmp_path / "latency.json"
    assert run(Namespace(checkpoint=str(reference_checkpoint), iterations=3, models=["shipped"], threads=1,
                         json=str(report))) == 0
    rows = {row["name"]: row for row in json.loads(report.read_text())["rows"]}
    assert {"shipped/torch/fp32", "shipped/onnxruntime/fp32"} <= set(rows)
