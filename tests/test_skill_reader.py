"""The skill reader: fitted on training commands only, frozen in the network, FiLM from five skill probabilities."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from vla_ros.envs.instructions import WORD_SPLITS, load_instructions, word_tokens
from vla_ros.grounding.fusion import NUM_SKILLS, build_fusion
from vla_ros.paths import share_path
from vla_ros.policy.network_config import NetworkConfig, NetworkConfigError
from vla_ros.policy.skill_reader import (
    SKILLS,
    filled_frame,
    filler_words,
    fit_skill_reader,
    skill_index,
    training_commands,
)


@pytest.fixture(scope="module")
def instructions():
    return load_instructions()


@pytest.fixture(scope="module")
def encoder():
    from vla_ros.grounding.encoder import ClipEncoder

    return ClipEncoder.from_pretrained(share_path("models", "clip"))


def test_skill_indices():
    assert len(SKILLS) == NUM_SKILLS
    assert skill_index("reach", None) == 0
    assert [skill_index("push", d) for d in ("left", "right", "forward", "back")] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="no skill"):
        skill_index("push", None)
    with pytest.raises(ValueError, match="no skill"):
        skill_index("juggle", "left")


def test_the_reader_is_fitted_on_training_commands_only(instructions):
    """No held-out frame, combination or word-split word reaches the reader's fit."""
    commands, labels = training_commands(instructions, seed=3, filled_variants=2)
    assert len(commands) == len(labels) and set(labels) == set(range(NUM_SKILLS))
    fillers = set(filler_words(instructions))
    assert len(fillers) > 8000 and not fillers & instructions.training_vocabulary()
    allowed = instructions.training_vocabulary() | fillers
    forbidden = set().union(*(instructions.word_splits[s].vocabulary() for s in WORD_SPLITS))
    heldout_frame_words = set().union(*(word_tokens(t) for task in instructions.templates.values()
                                        for t in task["heldout"])) - allowed
    assert heldout_frame_words  # ("please", "displace", ...): the check below means something
    for command, label in zip(commands, labels):
        tokens = word_tokens(command)
        assert tokens <= allowed and not tokens & forbidden and not tokens & heldout_frame_words, command
        colour, shape, direction = instructions.parse(command)
        if colour is not None and shape is not None:
            assert (colour, shape) not in instructions.heldout_combos, command
        # a word-dropped variant keeps its direction: the label stays true to the words
        assert direction == (None if label == 0 else SKILLS[label]), command
    assert sum(bool(word_tokens(c) & fillers) for c in commands) > len(commands) // 6  # the fillers are there
    # the same seed gives the same commands; without fillers, the ones an earlier recipe was fitted on
    assert training_commands(instructions, seed=3, filled_variants=2) == (commands, labels)
    unfilled = training_commands(instructions, seed=3)
    assert len(unfilled[0]) == len(commands) * 5 // 7 and not any(word_tokens(c) & fillers for c in unfilled[0])


def test_filled_frames_keep_their_placeholders_and_change_only_frame_words():
    rng = np.random.default_rng(0)
    frame = "push the {colour} {shape} {direction}"
    filled = [filled_frame(frame, ["zoom", "abide"], rng) for _ in range(200)]
    for f in filled:
        words = f.split()
        assert [w for w in words if w.startswith("{")] == ["{colour}", "{shape}", "{direction}"], f
        assert set(words) <= {"push", "the", "zoom", "abide", "{colour}", "{shape}", "{direction}"}, f
        assert len(words) in (5, 6)
    assert len(set(filled)) > 10 and frame in filled  # rate 0.5: some frames stay as they were


def test_the_reader_names_the_skill_of_new_commands_from_sentence_embeddings(instructions, encoder):
    commands, labels = training_commands(instructions, seed=0, per_frame=1, dropped_variants=1)
    fit = fit_skill_reader(encoder.encode_sentences(commands), labels, steps=300)
    assert fit.train_accuracy > 0.99 and fit.weight.shape == (NUM_SKILLS, encoder.sentence_dim)
    # commands of the validation word split (new colour and shape words, a new frame) keep their skill
    rng = np.random.default_rng(1)
    new = [(instructions.word_split_command("validation_words", task, "red", "cube", direction, rng)[0],
            skill_index(task, direction)) for task, direction in [("reach", None), *(("push", d) for d in SKILLS[1:])]
           for _ in range(4)]
    sentences = torch.nn.functional.normalize(encoder.encode_sentences([c for c, _ in new]), dim=-1)
    predicted = (sentences @ fit.weight.T + fit.bias).argmax(-1)
    assert (predicted == torch.tensor([label for _, label in new])).float().mean() >= 0.8
    with pytest.raises(ValueError, match="labels"):
        fit_skill_reader(torch.zeros(3, 8), [0, 1])


def test_skill_reader_width_is_a_validated_region_map_option():
    config = NetworkConfig(fusion="region_map", skill_reader_width=384)
    assert NetworkConfig.from_dict(config.to_dict()).skill_reader_width == 384
    assert NetworkConfig.from_dict({"fusion": "region_map"}).skill_reader_width == 0  # older checkpoints
    with pytest.raises(NetworkConfigError, match="skill_reader_width is an option of the region_map fusion"):
        NetworkConfig(fusion="cross_attention", skill_reader_width=384)
    with pytest.raises(NetworkConfigError, match="two sources for one FiLM"):
        NetworkConfig(fusion="region_map", skill_reader_width=384, command_film=True)
    hard = NetworkConfig(fusion="region_map", skill_reader_width=384, skill_reader_hard=True)
    assert NetworkConfig.from_dict(hard.to_dict()).skill_reader_hard
    assert hard.fusion_kwargs()["skill_reader_hard"] and "skill_reader_hard" not in config.fusion_kwargs()
    assert not NetworkConfig.from_dict({"fusion": "region_map", "skill_reader_width": 384}).skill_reader_hard
    with pytest.raises(NetworkConfigError, match="skill_reader_hard needs a skill reader"):
        NetworkConfig(fusion="region_map", skill_reader_hard=True)


def test_a_hard_reader_conditions_on_the_skill_it_names_one_hot():
    torch.manual_seed(0)
    soft = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12, skill_reader_width=10)
    hard = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12, skill_reader_width=10,
                        skill_reader_hard=True)
    hard.load_state_dict(soft.state_dict())  # the same parameters and buffers: only the reading differs
    with torch.no_grad():
        for fusion in (soft, hard):
            fusion.skill_weight.copy_(torch.randn(NUM_SKILLS, 10, generator=torch.Generator().manual_seed(1)))
            fusion.film.weight.normal_(generator=torch.Generator().manual_seed(2))
    sentence = torch.randn(6, 10)
    probabilities, one_hot = soft.skills(sentence), hard.skills(sentence)
    assert torch.equal(one_hot, torch.nn.functional.one_hot(probabilities.argmax(-1), NUM_SKILLS).float())
    assert (probabilities.max(-1).values < 1).all()  # the soft reading is not already one-hot
    glob, patches, text = torch.randn(6, 16), torch.randn(6, 16, 16), torch.randn(6, 16)
    features = [fusion(glob, patches, text, sentence=sentence) for fusion in (soft, hard)]
    assert not torch.allclose(*features)
    with pytest.raises(ValueError, match="skill_reader_hard needs a skill reader"):
        build_fusion("region_map", embed_dim=16, num_patches=16, skill_reader_hard=True)


def test_the_frozen_reader_conditions_the_mlp_through_five_probabilities_only():
    torch.manual_seed(0)
    plain = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12)
    fusion = build_fusion("region_map", embed_dim=16, num_patches=16, out_dim=8, hidden_dim=12,
                          skill_reader_width=10)
    fusion.load_state_dict(plain.state_dict(), strict=False)
    # the reader is buffers: stored with the weights, never trained
    names = dict(fusion.named_parameters())
    assert "skill_weight" not in names and {"skill_weight", "skill_bias"} <= set(fusion.state_dict())
    glob, patches, text, sentence = torch.randn(3, 16), torch.randn(3, 16, 16), torch.randn(3, 16), torch.randn(3, 10)
    assert torch.allclose(plain(glob, patches, text), fusion(glob, patches, text, sentence=sentence))  # zero FiLM
    with torch.no_grad():
        fusion.film.weight.normal_()
        fusion.skill_weight.normal_(std=5.0)
    # two sentences the reader reads as one skill condition alike; another skill changes the features
    same = sentence + 1e-4 * torch.randn(3, 10)
    assert torch.allclose(fusion(glob, patches, text, sentence=sentence), fusion(glob, patches, text, sentence=same),
                          atol=1e-3)
    probabilities = fusion.skills(sentence)
    assert probabilities.shape == (3, NUM_SKILLS) and torch.allclose(probabilities.sum(-1), torch.ones(3))
    other = sentence.clone()
    other[0] = -sentence[0]
    changed = (fusion(glob, patches, text, sentence=other) - fusion(glob, patches, text, sentence=sentence)).abs()
    assert changed[0].max() > 1e-4 and changed[1:].max() == 0  # each command acts on its own row only
    with pytest.raises(ValueError, match="sentence embedding"):
        fusion(glob, patches, text)
    with pytest.raises(ValueError, match="choose one"):
        build_fusion("region_map", embed_dim=16, num_patches=16, command_film=True, skill_reader_width=10)


def test_a_skill_reader_checkpoint_trains_saves_loads_and_acts(tmp_path):
    """A real (tiny) `vla-ros train` of the mixed task with a reader (and the joint state in the fusion); the Policy
    vla_node runs, torch and ONNX."""
    from vla_ros.cli import main
    from vla_ros.commands.export import sample_inputs
    from vla_ros.policy.checkpoint import CheckpointError
    from vla_ros.policy.export import export_onnx, parity_report
    from vla_ros.policy.policy import ONNX_DIR, Policy

    out = tmp_path / "run"
    assert main(["train", "--task", "mixed", "--clip", str(share_path("models", "clip")), "--fusion", "region_map",
                 "--reference-frame", "--no-map-weights", "--skill-reader", "--skill-reader-hard",
                 "--skill-reader-filled", "1", "--fusion-proprio", "--bc-episodes", "2",
                 "--dagger-rounds", "0", "--bc-epochs", "1", "--ppo-steps", "0", "--eval-episodes", "1",
                 "--num-envs", "1", "--vec-env", "dummy", "--fusion-dim", "32", "--hidden-dim", "32",
                 "--out", str(out)]) == 0
    policy = Policy.load(out / "final")
    fusion = policy.network.features_extractor.fusion
    assert policy.config["network"]["skill_reader_width"] == policy.encoder.sentence_dim == 384
    assert policy.config["network"]["fusion_proprio"] and fusion.proprio_dim == 2 * policy.num_joints
    assert policy.config["metrics"]["skill_reader_train_accuracy"] > 0.95  # filled frames are harder to read
    assert policy.config["network"]["skill_reader_hard"] and fusion.skill_reader_hard
    reads = fusion.skills(policy.encoder.encode_sentences(["touch the red cube", "push the blue ball to the left"]))
    assert reads.tolist() == [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]  # one-hot
    frame = np.zeros((policy.encoder.image_size,) * 2 + (3,), np.uint8)
    action = policy.normalized_action(frame, "push the red cube to the left", np.zeros(2 * policy.num_joints))
    assert action.shape == (policy.num_joints,) and np.all(np.abs(action) <= 1)
    files = export_onnx(policy, out / "final" / ONNX_DIR)
    frames, commands, states = sample_inputs(policy, 6, seed=5)
    commands[:2] = ["touch the red cube", "the blue ball should go to the left"]
    report = parity_report(policy, files, frames, commands, states)
    assert report["actions_match"] and report["max_abs_diff_text_embedding"] < 1e-4, report
    onnx_policy = Policy.load(out / "final", backend="onnxruntime")
    assert onnx_policy.onnx.has_sentence
    for frame, command, state in zip(frames[:3], commands, states):
        policy.reset()
        onnx_policy.reset()
        assert np.allclose(policy.normalized_action(frame, command, state),
                           onnx_policy.normalized_action(frame, command, state), atol=1e-4)
    _done_thresholds_follow_the_command(policy, out / "final")
    # an export without the sentence input does not pass for this checkpoint
    reader_free = out / "reader_free"
    export_onnx(Policy.load(share_path("models", "policy")), reader_free / ONNX_DIR)
    shutil.rmtree(out / "final" / ONNX_DIR)
    shutil.copytree(reader_free / ONNX_DIR, out / "final" / ONNX_DIR)
    with pytest.raises(CheckpointError, match="lacks the skill reader's sentence input"):
        Policy.load(out / "final", backend="onnxruntime")


def _done_thresholds_follow_the_command(policy, folder):
    """`vla-ros train-done` on the mixed reader checkpoint: a threshold per task, applied by the command's task."""
    import dataclasses

    from vla_ros.commands.train_done import save_done_head, train_done
    from vla_ros.policy.done_head import DONE_TASKS
    from vla_ros.policy.policy import Policy

    head, done, report = train_done(policy, episodes=4, validation_episodes=6, vec_env="dummy", progress=False)
    assert done.task_thresholds and set(done.task_thresholds) <= set(DONE_TASKS)
    assert set(report["by_task"]) == set(done.task_thresholds)
    for name, entry in report["by_task"].items():
        assert entry["threshold"] == done.task_thresholds[name]
        assert entry["validation"]["episodes"] >= 1
    assert sum(entry["validation"]["episodes"] for entry in report["by_task"].values()) == 6
    # reach's signal fires at any probability, push's at none: which applies is read from the command alone
    always, never = 1e-12, float(np.nextafter(1.0, 0.0))
    save_done_head(folder, head, dataclasses.replace(done, task_thresholds={"reach": always, "push": never}))
    loaded = Policy.load(folder)
    assert loaded.done_config.task_thresholds == {"reach": always, "push": never}
    frame = np.zeros((loaded.encoder.image_size,) * 2 + (3,), np.uint8)
    state = np.zeros(2 * loaded.num_joints)
    for command, fires in (("touch the red cube", True), ("push the blue ball to the left", False),
                           ("move the green cylinder away from you", False)):
        loaded.reset()
        loaded.normalized_action(frame, command, state)
        assert loaded.last_done is fires, command
