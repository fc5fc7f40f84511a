"""The token skill reader: each token state scored, log-sum-exp pooled; read before the network, stored in it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_ros.envs.instructions import load_instructions
from vla_ros.grounding.fusion import NUM_SKILLS, build_fusion
from vla_ros.keys import FEAT_SENTENCE, FEAT_SKILL_LOGITS
from vla_ros.paths import share_path
from vla_ros.policy.features import clip_feature_space
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError
from vla_ros.policy.skill_reader import (
    SKILLS,
    CommandSkillReader,
    encode_token_batches,
    fit_token_skill_reader,
    skill_index,
    token_skill_logits,
    training_commands,
)


@pytest.fixture(scope="module")
def encoder():
    from vla_ros.grounding.encoder import ClipEncoder

    return ClipEncoder.from_pretrained(share_path("models", "clip"))


def test_token_logits_pool_each_skill_over_the_real_tokens_only():
    states = torch.randn(2, 4, 6)
    weight, bias = torch.randn(NUM_SKILLS, 6), torch.randn(NUM_SKILLS)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    logits = token_skill_logits(states, mask, weight, bias)
    scores = torch.nn.functional.normalize(states, dim=-1) @ weight.T + bias
    assert torch.allclose(logits[0], torch.logsumexp(scores[0, :3], 0))
    assert torch.allclose(logits[1], torch.logsumexp(scores[1], 0))
    changed = states.clone()
    changed[0, 3] = 100.0  # a padding position does not count, whatever it holds
    assert torch.allclose(token_skill_logits(changed, mask, weight, bias)[0], logits[0])
    with pytest.raises(ValueError, match="a token in every row"):
        token_skill_logits(states, torch.zeros(2, 4, dtype=torch.bool), weight, bias)
    with pytest.raises(ValueError, match="labels"):
        fit_token_skill_reader(states, mask, [0])


def test_the_token_reader_names_the_skill_of_new_verbs_and_words(encoder):
    """Fitted on training commands, it reads commands of the validation word split and of verbs it never saw."""
    instructions = load_instructions()
    commands, labels = training_commands(instructions, seed=0, per_frame=1, dropped_variants=1)
    fit = fit_token_skill_reader(*encode_token_batches(encoder, commands), labels, steps=300)
    assert fit.train_accuracy > 0.99 and fit.weight.shape == (NUM_SKILLS, encoder.sentence_dim)
    rng = np.random.default_rng(1)
    skills = [("reach", None), *(("push", d) for d in SKILLS[1:])]
    new = [(instructions.word_split_command("validation_words", task, "red", "cube", direction, rng)[0],
            skill_index(task, direction)) for task, direction in skills for _ in range(4)]
    # verbs of no instruction split (WordNet verbs the fit never drew), with and without a direction
    for verb in ("relocate", "budge", "transport"):
        new += [(f"{verb} the green ball", 0), (f"{verb} the green ball to the right", 2),
                (f"{verb} the green ball towards you", 4)]
    reader = CommandSkillReader(encoder, fit.weight, fit.bias)
    predicted = reader.logits([c for c, _ in new]).argmax(-1)
    assert (predicted == torch.tensor([label for _, label in new])).float().mean() >= 0.9


def test_the_command_reader_reads_the_networks_buffers_and_caches_by_reading(encoder):
    fusion = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12,
                          skill_reader_width=encoder.sentence_dim, skill_reader_tokens=True)
    network = torch.nn.Module()
    network.features_extractor = torch.nn.Module()
    network.features_extractor.fusion = fusion
    reader = CommandSkillReader.of_network(network, encoder)
    assert reader is not None and reader.weight is fusion.skill_weight
    first = reader.logits(["touch the red cube", "touch the red cube"])
    assert first.shape == (2, NUM_SKILLS) and torch.equal(first[0], first[1]) and torch.all(first == first[0, 0])
    with torch.no_grad():
        fusion.skill_weight.normal_()  # a fit copied into the buffers ...
    reader.clear()
    assert not torch.allclose(reader.logits(["touch the red cube"]), first[:1])  # ... is what the reader reads
    mean_reader = build_fusion("region_map", embed_dim=16, num_patches=16, skill_reader_width=encoder.sentence_dim)
    network.features_extractor.fusion = mean_reader
    assert CommandSkillReader.of_network(network, encoder) is None
    with pytest.raises(ValueError, match="token reader of this text tower"):
        CommandSkillReader(encoder, torch.zeros(NUM_SKILLS, 3), torch.zeros(NUM_SKILLS))


def test_a_token_reader_fusion_takes_five_logits():
    torch.manual_seed(0)
    fusion = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12,
                          skill_reader_width=10, skill_reader_tokens=True)
    assert fusion.skill_input_width == NUM_SKILLS
    logits = torch.randn(3, NUM_SKILLS)
    assert torch.allclose(fusion.skills(logits), torch.softmax(logits, -1))
    glob, patches, text = torch.randn(3, 16), torch.randn(3, 16, 16), torch.randn(3, 16)
    assert fusion(glob, patches, text, sentence=logits).shape == (3, 8)
    with pytest.raises(ValueError, match="skill logits"):
        fusion(glob, patches, text, sentence=torch.randn(3, 10))
    with pytest.raises(ValueError, match="skill_reader_tokens needs a skill reader"):
        build_fusion("region_map", embed_dim=16, num_patches=16, skill_reader_tokens=True)


def test_skill_reader_tokens_is_a_validated_option_older_checkpoints_lack():
    config = NetworkConfig(fusion="region_map", skill_reader_width=384, skill_reader_tokens=True)
    assert NetworkConfig.from_dict(config.to_dict()).skill_reader_tokens
    assert config.fusion_kwargs()["skill_reader_tokens"]
    assert not NetworkConfig.from_dict({"fusion": "region_map", "skill_reader_width": 384}).skill_reader_tokens
    with pytest.raises(NetworkConfigError, match="skill_reader_tokens needs a skill reader"):
        NetworkConfig(fusion="region_map", skill_reader_tokens=True)
    space = clip_feature_space(16, 4, 10, skill_logits=True)
    assert space[FEAT_SKILL_LOGITS].shape == (NUM_SKILLS,) and FEAT_SENTENCE not in space.spaces
    with pytest.raises(ValueError, match="not both"):
        clip_feature_space(16, 4, 10, sentence_dim=384, skill_logits=True)


def test_a_token_reader_checkpoint_trains_loads_acts_and_exports(tmp_path):
    """A real (tiny) `vla-ros train` with a token reader; the Policy reads the command's logits itself, and its
    ONNX export (the reader inside the text graph) acts as the torch policy does."""
    import shutil

    from vla_ros.cli import main
    from vla_ros.commands.export import sample_inputs
    from vla_ros.policy.checkpoint import CheckpointError, build_network, save_checkpoint
    from vla_ros.policy.export import export_onnx, parity_report
    from vla_ros.policy.policy import ONNX_DIR, Policy

    out = tmp_path / "run"
    assert main(["train", "--task", "mixed", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                 "--reference-frame", "--no-map-weights", "--skill-reader", "--skill-reader-tokens",
                 "--fusion-proprio", "--bc-episodes", "2", "--dagger-rounds", "0", "--bc-epochs", "1",
                 "--ppo-steps", "0", "--eval-episodes", "1", "--num-envs", "1", "--vec-env", "dummy",
                 "--fusion-dim", "32", "--hidden-dim", "32", "--out", str(out)]) == 0
    policy = Policy.load(out / "final")
    assert policy.config["network"]["skill_reader_tokens"] and policy.command_skill_reader is not None
    assert policy.config["metrics"]["skill_reader_train_accuracy"] > 0.99
    reads = policy.command_skill_reader.logits(["touch the red cube", "push the blue ball to the left"]).argmax(-1)
    assert reads.tolist() == [0, 1]
    frame = np.zeros((policy.encoder.image_size,) * 2 + (3,), np.uint8)
    action = policy.normalized_action(frame, "push the red cube to the left", np.zeros(2 * policy.num_joints))
    assert action.shape == (policy.num_joints,) and np.all(np.abs(action) <= 1)
    assert FEAT_SKILL_LOGITS in policy.last_features and FEAT_SENTENCE not in policy.last_features
    # the env wrapper every evaluator builds from the network observes what the policy does: the reader's logits
    from vla_ros.keys import FEAT_REFERENCE_PATCHES
    from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
    from vla_ros.policy.envs import make_vec_env

    venv = ClipFeatureVecEnv.for_network(make_vec_env("mixed", 1, 0, vec_env="dummy"), policy.network,
                                         policy.encoder, policy.normalizer)
    try:
        obs = venv.reset()
        assert {FEAT_SKILL_LOGITS, FEAT_REFERENCE_PATCHES} <= set(obs) and FEAT_SENTENCE not in obs
        assert np.allclose(obs[FEAT_SKILL_LOGITS], policy.command_skill_reader.logits(venv.commands).numpy())
    finally:
        venv.close()
    files = export_onnx(policy, out / "final" / ONNX_DIR)
    frames, commands, states = sample_inputs(policy, 6, seed=5)
    commands[:3] = ["touch the red cube", "the blue ball should go to the left", "relocate the green can back"]
    report = parity_report(policy, files, frames, commands, states)
    assert report["actions_match"] and report["max_abs_diff_skill_logits"] < 1e-4, report
    onnx_policy = Policy.load(out / "final", backend="onnxruntime")
    assert onnx_policy.onnx.has_skill_logits and onnx_policy.onnx.has_sentence
    for frame, command, state in zip(frames[:3], commands, states):
        policy.reset()
        onnx_policy.reset()
        assert np.allclose(policy.normalized_action(frame, command, state),
                           onnx_policy.normalized_action(frame, command, state), atol=1e-4)
    # an export that reads the sentence embedding does not pass for this checkpoint
    config = policy.config | {"network": policy.config["network"] | {"skill_reader_tokens": False}}
    sentence_export = tmp_path / "sentence"
    config.pop("format")
    config["clip"] = config["clip"] | {"path": str(share_path("models", "clip"))}
    save_checkpoint(sentence_export, build_network(config), config)
    export_onnx(Policy.load(sentence_export), sentence_export / ONNX_DIR)
    shutil.rmtree(out / "final" / ONNX_DIR)
    shutil.copytree(sentence_export / ONNX_DIR, out / "final" / ONNX_DIR)
    with pytest.raises(CheckpointError, match="run `vla-ros export` again"):
        Policy.load(out / "final", backend="onnxruntime")
