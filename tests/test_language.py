"""Language: word splits held out of training, the pretrained text tower (offline, hash-checked), refusal."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from vla_ros.envs.instructions import WORD_SPLITS, load_instructions, word_tokens
from vla_ros.paths import share_path

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def instructions():
    return load_instructions()


@pytest.fixture(scope="module")
def forbidden(instructions):
    """Every colour and shape word of the validation and held-out word splits."""
    return set().union(*(instructions.word_splits[s].vocabulary() for s in WORD_SPLITS))


def test_both_word_splits_are_defined_and_new(instructions, forbidden):
    assert set(instructions.word_splits) == set(WORD_SPLITS)
    validation = instructions.word_splits["validation_words"].vocabulary()
    heldout = instructions.word_splits["heldout_words"].vocabulary()
    assert validation and heldout and not validation & heldout
    assert not forbidden & instructions.training_vocabulary()


def test_no_word_split_word_reaches_any_training_caption(instructions, forbidden):
    """The captions train-clip can produce (sampler captions, named colours, absent-object and nonsense negatives)
    and the texts the refusal's text gate is fitted on."""
    from vla_ros.grounding.data import CaptionSampler
    from vla_ros.grounding.text_gate import gate_training_texts
    from vla_ros.grounding.vocabulary import load_clip_vocabulary, nonsense_phrase

    vocabulary = load_clip_vocabulary(instructions=instructions)
    assert len(vocabulary.named_colours) > 300
    assert not vocabulary.tokens() & forbidden
    wide = load_clip_vocabulary(share_path("sim", "tasks", "clip_vocabulary_wide.yaml"), instructions=instructions)
    assert not wide.tokens() & forbidden and len(wide.tokens()) > len(vocabulary.tokens()) - 5
    sampler = CaptionSampler.from_instructions(instructions, vocabulary=vocabulary, named_absent_fraction=0.5)
    rng = np.random.default_rng(0)
    palette = len(instructions.colours)
    texts, named_absent = [], 0
    for _ in range(3000):
        colours = rng.integers(len(sampler.colour_names), size=3)
        shapes = rng.integers(len(instructions.shapes), size=3)
        positions = rng.uniform(-0.2, 0.2, size=(3, 3))
        texts.append(sampler.scene_caption(colours, shapes, positions, rng))
        texts.append(sampler.object_caption(int(colours[0]), int(shapes[0]), rng)[0])
        texts.append(sampler.shape_caption(int(shapes[1]), rng)[0])
        absent = sampler.absent_caption(colours, shapes, rng)
        if absent is not None:
            texts.append(absent[0])
            # absent: no object on the table looks like it (named colours count as their palette colour)
            present = {(int(sampler.colour_classes[c]), int(s)) for c, s in zip(colours, shapes)}
            assert (int(sampler.colour_classes[absent[1]]), absent[2]) not in present
            named_absent += absent[1] >= palette
        texts.append(nonsense_phrase(rng))
    positives, negatives = gate_training_texts(3000, seed=0, instructions=instructions, vocabulary=vocabulary)
    texts += positives + negatives  # the refusal text gate's training texts
    leaked = {token for text in texts for token in word_tokens(text)} & forbidden
    assert not leaked, f"word-split words in training captions: {sorted(leaked)}"
    assert 0.3 < named_absent / 3000 < 0.7  # about half the absent captions use a named colour


def test_nonsense_phrases_name_no_colour_or_shape(instructions):
    from vla_ros.grounding.vocabulary import load_clip_vocabulary, nonsense_phrase

    vocabulary = load_clip_vocabulary(instructions=instructions)
    # colour and shape words of the palette, the named colours, the extra shape nouns and every word split
    named = (set(instructions.colours) | {w for ws in instructions.shape_words.values() for w in ws}
             | {t for c in vocabulary.named_colours for t in word_tokens(c.name)}
             | {w for ws in vocabulary.shape_words.values() for w in ws}
             | set().union(*(s.vocabulary() for s in instructions.word_splits.values())))
    rng = np.random.default_rng(1)
    for _ in range(2000):
        phrase = nonsense_phrase(rng)
        assert phrase.strip()
        assert not word_tokens(phrase) & named, phrase


def test_vocabulary_file_with_a_heldout_word_is_refused(tmp_path, instructions):
    from vla_ros.grounding.vocabulary import load_clip_vocabulary

    data = yaml.safe_load(share_path("sim", "tasks", "clip_vocabulary.yaml").read_text())
    heldout_shape = instructions.word_splits["heldout_words"].shape_words["cube"][0]
    data["shapes"]["cube"].append(heldout_shape)
    path = tmp_path / "vocab.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="word-split words"):
        load_clip_vocabulary(path, instructions)


def test_named_colours_never_look_like_a_heldout_combo(instructions):
    from vla_ros.grounding.vocabulary import load_clip_vocabulary

    vocabulary = load_clip_vocabulary(instructions=instructions)
    for colour in vocabulary.named_colours[:200]:
        for shape in instructions.shapes:
            assert colour.allows(shape, instructions) == ((colour.palette, shape) not in instructions.heldout_combos)
    reds = [c for c in vocabulary.named_colours if c.palette == "red"]
    assert reds and not reds[0].allows("ball", instructions)  # the red ball is held out


def test_instruction_file_rejects_word_split_words_shared_with_training(tmp_path):
    from vla_ros.envs.tabletop import TabletopEnv

    data = yaml.safe_load(share_path("sim", "tasks", "instructions.yaml").read_text())
    data["word_splits"]["heldout_words"]["shapes"]["cube"] = ["block"]  # a training shape word
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="training words"):
        TabletopEnv(templates_path=path)
    data = yaml.safe_load(share_path("sim", "tasks", "instructions.yaml").read_text())
    data["word_splits"]["validation_words"]["colours"]["red"] = ["crimson"]  # a held-out word
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="word_splits"):
        TabletopEnv(templates_path=path)


@pytest.mark.parametrize("split", WORD_SPLITS)
def test_word_split_env_commands_use_the_split_words(split, instructions):
    from vla_ros.envs.tabletop import TabletopEnv

    words = instructions.word_splits[split]
    env = TabletopEnv(split=split, render_observation=False)
    kinds = set()
    for seed in range(30):
        _, info = env.reset(seed=seed)
        kinds.add(info["word_kind"])
        tokens = word_tokens(info["command"])
        target = env.scene_objects[env.target_index]
        colour_words = set().union(*(word_tokens(w) for w in words.colour_words[target["colour"]]))
        shape_words = set().union(*(word_tokens(w) for w in words.shape_words[target["shape"]]))
        if info["word_kind"] in ("colour", "both"):
            assert tokens & colour_words, info["command"]
        if info["word_kind"] in ("shape", "both"):
            assert tokens & shape_words, info["command"]
        assert (target["colour"], target["shape"]) not in instructions.heldout_combos
        # the parser knows the split's words, so external commands in them ground in the simulator too
        assert instructions.parse(info["command"])[:2] == (target["colour"], target["shape"])
    assert kinds == {"colour", "shape", "both"}
    env.close()


# --------------------------------------------------------------------------- the pretrained text tower
def test_text_tower_weights_are_verified_and_a_tampered_copy_is_refused(tmp_path):
    from vla_ros.grounding.text_tower import TextTowerError, spec, text_tower_dir, verify_text_tower

    folder = verify_text_tower(MINILM)
    assert (folder / "tokenizer.json").is_file()
    copy = tmp_path / "tower"
    shutil.copytree(text_tower_dir(MINILM), copy)
    weights = copy / spec(MINILM).weights
    with open(weights, "r+b") as f:
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(TextTowerError, match="sha256"):
        verify_text_tower(MINILM, copy)
    with pytest.raises(TextTowerError, match="unknown text tower"):
        verify_text_tower("sentence-transformers/all-MiniLM-L6-v2")


def test_a_clip_naming_a_hub_text_tower_is_refused(tmp_path):
    from vla_ros.grounding import create_clip, load_clip, save_clip_checkpoint
    from vla_ros.grounding.config import tiny_clip_config
    from vla_ros.grounding.text_tower import text_cfg

    cfg = tiny_clip_config("vla-tiny-clip")
    cfg["text_cfg"] = text_cfg(MINILM)
    loaded = create_clip(cfg, seed=0)
    save_clip_checkpoint(loaded.model, tmp_path / "clip", loaded.model_cfg, loaded.preprocess_cfg)
    config_path = tmp_path / "clip" / "open_clip_config.json"
    text = config_path.read_text().replace(f'"{MINILM}"', '"sentence-transformers/all-MiniLM-L6-v2"')
    config_path.write_text(text)
    with pytest.raises(ValueError, match="sentence-transformers/all-MiniLM-L6-v2"):
        load_clip(tmp_path / "clip")


def test_clip_with_the_pretrained_tower_saves_only_what_it_trained_and_reloads(tmp_path):
    from vla_ros.grounding import ClipEncoder, create_clip, save_clip_checkpoint
    from vla_ros.grounding.config import tiny_clip_config
    from vla_ros.grounding.text_tower import text_cfg

    cfg = tiny_clip_config("vla-tiny-clip")
    cfg["text_cfg"] = text_cfg(MINILM)
    loaded = create_clip(cfg, seed=3)
    save_clip_checkpoint(loaded.model, tmp_path / "clip", loaded.model_cfg, loaded.preprocess_cfg)
    from safetensors import safe_open

    with safe_open(tmp_path / "clip" / "open_clip_model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("text.transformer.") for k in keys)
    assert any(k.startswith("text.proj.") for k in keys)
    assert (tmp_path / "clip" / "open_clip_model.safetensors").stat().st_size < 4_000_000  # no 90 MB tower
    original = ClipEncoder(loaded)
    again = ClipEncoder.from_pretrained(tmp_path / "clip")
    commands = ["touch the crimson orb", "push the red cube to the left"]
    torch.testing.assert_close(again.encode_text(commands), original.encode_text(commands), atol=1e-5, rtol=1e-4)


def test_text_tower_loads_with_the_network_switched_off(tmp_path):
    """A subprocess whose every socket connect fails loads and runs a CLIP with the pretrained text tower."""
    script = textwrap.dedent(f"""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from vla_ros.grounding import ClipEncoder, create_clip
        from vla_ros.grounding.config import tiny_clip_config
        from vla_ros.grounding.text_tower import text_cfg
        cfg = tiny_clip_config("vla-tiny-clip")
        cfg["text_cfg"] = text_cfg("{MINILM}")
        encoder = ClipEncoder(create_clip(cfg, seed=0))
        print(tuple(encoder.encode_text(["reach the scarlet globe"]).shape))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("(1, 128)")


def test_unlocked_layers_on_cached_states_equal_the_full_tower():
    from vla_ros.grounding import create_clip
    from vla_ros.grounding.config import tiny_clip_config
    from vla_ros.grounding.text_pooling import pool_projected
    from vla_ros.grounding.text_tower import text_cfg
    from vla_ros.grounding.training import unlocked_text_forward

    cfg = tiny_clip_config("vla-tiny-clip")
    cfg["text_cfg"] = text_cfg(MINILM)
    loaded = create_clip(cfg, seed=0)
    text = loaded.model.text.eval()
    commands = ["push the red cube to the left", "a ball", "the violet thing over there please"]
    tokens = loaded.tokenizer(commands, context_length=64)
    ids = tokens[:, : int((tokens != 0).sum(1).max())]
    mask = (ids != 0).long()
    with torch.no_grad():
        reference = text(tokens)
        hidden = text.transformer(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for layers in (1, 2):
            states = [hidden[-(layers + 1)][i, : int(mask[i].sum())] for i in range(len(commands))]
            pooled = pool_projected(text, *unlocked_text_forward(text, states, layers), "mean")
            torch.testing.assert_close(pooled, reference, atol=1e-5, rtol=1e-4)


def test_projected_tokens_pooling_is_the_mean_of_projected_token_states_and_survives_a_reload(tmp_path):
    from vla_ros.grounding import ClipEncoder, create_clip, load_clip, save_clip_checkpoint
    from vla_ros.grounding.config import tiny_clip_config
    from vla_ros.grounding.text_pooling import TEXT_POOLING_KEY
    from vla_ros.grounding.text_tower import text_cfg

    cfg = tiny_clip_config("vla-tiny-clip")
    cfg["text_cfg"] = text_cfg(MINILM)
    mean = create_clip(cfg, seed=0)
    cfg[TEXT_POOLING_KEY] = "projected_tokens"
    tokens_first = create_clip(cfg, seed=0)
    tokens_first.model.load_state_dict(mean.model.state_dict())
    commands = ["reach the cherry spheroid", "a ball"]
    tokens = mean.tokenizer(commands, context_length=64)
    text = tokens_first.model.text.eval()
    mask = (tokens != 0).long()
    with torch.no_grad():
        states = text.transformer(input_ids=tokens, attention_mask=mask).last_hidden_state
        projected = text.proj(states)
        expected = torch.stack([projected[i, mask[i].bool()].mean(0) for i in range(len(commands))])
        got = tokens_first.model.encode_text(tokens)
        before = mean.model.eval().encode_text(tokens)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, before, atol=1e-3)  # the MLP does not commute with the mean
    # the choice is part of the checkpoint: a reload pools the same way
    save_clip_checkpoint(tokens_first.model, tmp_path / "clip", cfg, tokens_first.preprocess_cfg)
    reloaded = ClipEncoder(load_clip(tmp_path / "clip"))
    torch.testing.assert_close(reloaded.encode_text(commands),
                               ClipEncoder(tokens_first).encode_text(commands), atol=1e-4, rtol=1e-3)
    cfg[TEXT_POOLING_KEY] = "max"
    with pytest.raises(ValueError, match=TEXT_POOLING_KEY):
        create_clip(cfg)


@pytest.mark.parametrize("unlocked", [0, 1])
def test_train_clip_with_the_pretrained_tower_exports_and_reloads(tmp_path, unlocked):
    from vla_ros.grounding import ClipEncoder
    from vla_ros.grounding.training import ClipTrainer, TrainClipConfig

    config = TrainClipConfig(out=str(tmp_path / "run"), steps=2, batch_size=8, train_scenes=16, eval_scenes=6,
                             eval_every=2, checkpoint_every=2, warmup_steps=1, text_tower=MINILM,
                             text_unlocked_layers=unlocked, broad_vocabulary=True, named_colour_scenes=8,
                             presence_weight=1.0, dense_pick_weight=1.0, moved_arm_fraction=0.0)
    trainer = ClipTrainer(config)
    frozen_layer = {n: p.detach().clone() for n, p in trainer.model.text.transformer.named_parameters()}
    metrics = trainer.train()
    assert set(metrics["zero_shot_accuracy"]) == {"train_combos", "heldout_combos", "validation_words"}
    assert 0.0 <= metrics["presence"]["auroc"] <= 1.0
    changed = {n for n, p in trainer.model.text.transformer.named_parameters() if not torch.equal(p, frozen_layer[n])}
    last = f"encoder.layer.{5}."
    assert all(n.startswith(last) for n in changed)
    assert bool(changed) == bool(unlocked)
    encoder = ClipEncoder.from_pretrained(tmp_path / "run" / "model")
    assert encoder.metadata["text_tower"]["unlocked_layers"] == unlocked
    state = trainer.eval_encoder().model.state_dict()
    for name, value in encoder.model.state_dict().items():
        torch.testing.assert_close(value.float(), state[name].float(), atol=2e-3, rtol=2e-3)
    with pytest.raises(ValueError, match="text_unlocked_layers"):
        ClipTrainer(TrainClipConfig(out=str(tmp_path / "bad"), text_unlocked_layers=1))
    with pytest.raises(ValueError, match="text_projection"):
        ClipTrainer(TrainClipConfig(out=str(tmp_path / "bad"), text_tower=MINILM, text_projection="conv"))


def test_continuing_only_the_text_projection_leaves_the_image_tower_and_text_tower_unchanged(tmp_path):
    """trainable='text_projection' from a shipped-style CLIP: the image tower's weights (what a policy's patch
    features come from) and MiniLM stay bit-identical; the projection trains; a wider vocabulary file is read."""
    from vla_ros.grounding.training import ClipTrainer, TrainClipConfig

    base = tmp_path / "base"
    common = dict(steps=2, batch_size=8, train_scenes=16, eval_scenes=6, eval_every=2, checkpoint_every=2,
                  warmup_steps=1, text_tower=MINILM, broad_vocabulary=True, named_colour_scenes=8,
                  presence_weight=1.0, moved_arm_fraction=0.0)
    ClipTrainer(TrainClipConfig(out=str(base), **common)).train()
    config = TrainClipConfig(out=str(tmp_path / "continued"), init_from=str(base / "model"),
                             trainable="text_projection",
                             vocabulary=str(share_path("sim", "tasks", "clip_vocabulary_wide.yaml")), **common)
    trainer = ClipTrainer(config)
    assert "crate" in trainer.vocabulary.shape_words["cube"]
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("text.proj.") or n == "logit_scale" for n in changed)
    for bad in (dict(init_from=None), dict(text_tower="none"), dict(adapter="lora"), dict(trainable="image")):
        with pytest.raises(ValueError, match="trainable"):
            ClipTrainer(TrainClipConfig(**{**config.__dict__, "out": str(tmp_path / "bad"), **bad}))


# --------------------------------------------------------------------------- refusal
def test_refusal_rule_and_calibration_statistics():
    from vla_ros.grounding.refusal import RefusalRule, auroc, separation_report, threshold_at_false_refusal

    valid = np.linspace(0.5, 0.9, 200)
    invalid = np.linspace(0.1, 0.45, 100)
    assert auroc(valid, invalid) == 1.0 and auroc(invalid, valid) == 0.0
    assert auroc(np.array([0.5]), np.array([0.5])) == 0.5
    threshold = threshold_at_false_refusal(valid, 0.01)
    assert (valid < threshold).mean() <= 0.01
    report = separation_report(valid, invalid, 0.01)
    assert report["refused_invalid"] == 1.0 and report["false_refusal"] <= 0.01
    rule = RefusalRule(threshold=0.4)
    assert rule.judge("the red cube", 0.41) is None
    refusal = rule.judge("the purple cube", 0.2)
    assert refusal.kind == "not_in_view" and "the purple cube" in refusal.reason
    assert RefusalRule.from_dict(rule.to_dict()) == rule
    assert RefusalRule.from_dict(None) is None
    familiar = RefusalRule.from_dict({"threshold": 0.1, "statistic": "max_dense_region_similarity_minus_familiarity",
                                      "familiarity_slope": 0.6, "reference_captions": ["the red cube"]})
    assert RefusalRule.from_dict(familiar.to_dict()) == familiar
    for bad in ({"threshold": float("nan")}, {"threshold": 3.0}, {"threshold": 0.3, "sigma_patches": 0},
                {"threshold": 0.3, "statistic": "mean"}, {"sigma_patches": 1.0}, ["threshold"],
                {"threshold": 0.3, "familiarity_slope": 0.5},  # a slope needs the familiarity statistic
                {"threshold": 0.3, "statistic": "max_dense_region_similarity_minus_familiarity"},  # and captions
                {"threshold": 0.3, "statistic": "max_dense_region_similarity_minus_familiarity",
                 "familiarity_slope": -1, "reference_captions": ["the red cube"]}):
        with pytest.raises(ValueError):
            RefusalRule.from_dict(bad)


def test_familiar_commands_are_judged_by_contrast_others_by_presence_and_the_gate_refuses_first():
    from vla_ros.grounding import ClipEncoder
    from vla_ros.grounding.refusal import TWO_BAR_STATISTIC, RefusalRule, contrast_scores
    from vla_ros.grounding.text_gate import TextGate

    # contrast: presence minus the best *other* reference caption at the command's best region
    contrast, rival = contrast_scores(np.array([0.6, 0.6]), torch.tensor([[0.6, 0.7, 0.1], [0.6, 0.2, 0.5]]),
                                      np.array([0, 0]))
    np.testing.assert_allclose(contrast, [-0.1, 0.1], atol=1e-6)
    assert rival.tolist() == [1, 2]

    encoder = ClipEncoder.random_init("vla-tiny-clip")
    captions = ("the red cube", "the blue ball")
    rule = RefusalRule(threshold=0.05, statistic=TWO_BAR_STATISTIC, reference_captions=captions,
                       unfamiliar_threshold=-1.0, familiarity_boundary=0.99)
    texts = encoder.encode_text([captions[0], "zq"])
    patches = torch.nn.functional.normalize(torch.randn(2, encoder.num_patches, encoder.embed_dim), dim=-1)
    judged = rule.judged(encoder, patches, texts)
    # a reference caption itself has familiarity 1: judged by contrast; the other by presence against -1
    assert judged["familiarity"][0] == pytest.approx(1.0, abs=1e-5) and judged["rival"][0] == captions[1]
    assert judged["bar"].tolist() == [0.05, -1.0] and judged["rival"][1] == ""
    assert judged["score"][1] == judged["presence"][1] and np.isnan(judged["contrast"][1])
    refusals = rule.refusals(encoder, patches, texts, [captions[0], "zq"])
    assert refusals[1] is None  # presence is always >= -1
    assert (refusals[0] is None) == (judged["score"][0] >= 0.05)
    if refusals[0] is not None:
        assert refusals[0].kind == "not_in_view" and captions[1] in refusals[0].reason

    gate = TextGate(weights=(1.0,) + (0.0,) * 15, bias=0.0, threshold=0.5)
    gated = RefusalRule(**{**rule.__dict__, "text_gate": gate})
    assert RefusalRule.from_dict(gated.to_dict()) == gated
    sentences = torch.eye(16)[:2] * torch.tensor([[1.0], [0.0]])
    assert gate.scores(sentences).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="sentence embeddings"):
        gate.scores(torch.zeros(1, 8))
    base = gated.to_dict()
    for change in ({"unfamiliar_threshold": None}, {"familiarity_boundary": 2.0}, {"reference_captions": []},
                   {"statistic": "max_dense_region_similarity"},
                   {"text_gate": {**gate.to_dict(), "weights": [float("nan")] * 16}},
                   {"text_gate": {**gate.to_dict(), "weights": [1.0] * 3}},
                   {"text_gate": {**gate.to_dict(), "threshold": float("inf")}},
                   {"text_gate": {"weights": [1.0] * 16}}):
        with pytest.raises(ValueError):
            RefusalRule.from_dict({**base, **change})


def test_sentence_embedding_is_the_text_towers_mean_pooled_output():
    """What the text gate reads: MiniLM's masked mean over the command's tokens, the input of the CLIP's projection."""
    from vla_ros.grounding import ClipEncoder

    encoder = ClipEncoder.from_pretrained(share_path("models", "clip"))
    captured = []
    hook = encoder.model.text.proj.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    commands = ["touch the red cube", "qzkx fjwoa", "go to the crimson box please"]
    try:
        encoder.encode_text(commands)
    finally:
        hook.remove()
    pooled = torch.nn.functional.normalize(captured[0].float(), dim=-1)
    sentences = encoder.encode_sentences(commands)
    assert sentences.shape == (3, 384)
    torch.testing.assert_close(sentences, pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encoder.encode_sentences(commands[1:2])[0], sentences[1])  # cached, batch-independent
    with pytest.raises(ValueError, match="pretrained"):
        ClipEncoder.random_init("vla-tiny-clip").encode_sentences(["the red cube"])


def test_token_states_come_from_the_embedding_pass_and_equal_a_pass_of_their_own():
    """A new command's text embedding and token states (the token skill reader's input) share one tower pass."""
    from vla_ros.grounding import ClipEncoder
    from vla_ros.grounding.encoder import trim_padding
    from vla_ros.grounding.text_pooling import token_states

    encoder = ClipEncoder.from_pretrained(share_path("models", "clip"))
    commands = ["push the red cube to the left", "touch the crimson box please", "a ball"]
    with torch.no_grad():
        expected, expected_mask = token_states(encoder.model.text, trim_padding(encoder.tokenize(commands)))
    passes = []
    hook = encoder.model.text.transformer.register_forward_hook(lambda *_: passes.append(1))
    try:
        encoder.encode_text(commands)
        assert len(passes) == 1
        states, mask = encoder.encode_token_states(commands)
        assert len(passes) == 1  # read from the embedding's pass, not a second one
        assert torch.equal(mask, expected_mask.bool())
        torch.testing.assert_close(states[mask], expected[expected_mask.bool()].float(), atol=1e-5, rtol=1e-4)
        assert not states[~mask].any()  # past a command's own tokens, zeros
        one, one_mask = encoder.encode_token_states(commands[2:])  # batch-independent, trimmed to its own length
        assert one_mask.shape[1] == int(expected_mask[2].sum())
        torch.testing.assert_close(one[0][one_mask[0]], states[2][mask[2]])
        encoder.clear_text_cache()
        encoder.encode_token_states(commands[:1])  # a command not embedded yet: one pass of its own
        assert len(passes) == 2
    finally:
        hook.remove()
    with pytest.raises(TypeError, match="list"):
        encoder.encode_token_states("the red cube")


def test_unreadable_commands_are_refused_before_scoring():
    from vla_ros.grounding import ClipEncoder
    from vla_ros.grounding.refusal import unreadable

    encoder = ClipEncoder.random_init("vla-tiny-clip")
    assert unreadable(encoder, "touch the red cube") is None
    for bad in ("", "   ", None, 42, "word " * 200):
        refusal = unreadable(encoder, bad)
        assert refusal is not None and refusal.kind == "unreadable" and refusal.reason


def test_presence_score_is_the_best_region_match():
    from vla_ros.grounding.refusal import presence_scores

    grid, size, dim = (4, 4), 64, 8
    patches = torch.nn.functional.normalize(torch.randn(2, 16, dim), dim=-1)
    text = torch.zeros(2, dim)
    text[0] = patches[0, 5]  # matches a patch of frame 0
    text[1] = -patches[1].mean(0)  # matches nothing in frame 1
    scores = presence_scores(patches, text, grid, size, sigma_patches=0.3)
    assert scores.shape == (2,)
    assert scores[0] > 0.9 and scores[1] < scores[0]


# --------------------------------------------------------------------------- the shipped policy
@pytest.fixture(scope="module")
def shipped_policy():
    from vla_ros.policy.policy import Policy

    return Policy.load(share_path("models", "policy"))


def test_shipped_policy_reads_a_pretrained_text_tower_and_has_a_calibrated_refusal(shipped_policy):
    assert shipped_policy.encoder.pretrained_text
    assert shipped_policy.encoder.metadata["text_tower"]["name"] == MINILM
    rule = shipped_policy.refusal_rule
    assert rule is not None
    assert rule.calibration["valid_splits"] == ["train", "validation_words", "validation_phrasings",
                                                "validation_words_unread"]
    assert rule.text_gate is not None and rule.text_gate.width == 384
    # words outside the CLIP's vocabulary are read through WordNet (validation words: what it was checked on)
    assert shipped_policy.encoder.lexicon is not None
    assert shipped_policy.reading("touch the canary dice")[0] == "touch the yellow cube"


def test_shipped_policy_refuses_objects_that_are_not_there_and_acts_on_those_that_are(shipped_policy, instructions):
    """Simulator scenes (seeds no evaluation uses): the env's command is acted on; a colour and a shape that are
    both absent from the table, and a blank command, are refused."""
    from vla_ros.envs.tabletop import TabletopEnv
    from vla_ros.policy.policy import CommandRefused

    env = TabletopEnv(split="train")
    absent_checked = 0
    try:
        for seed in range(900_000, 900_012):
            obs, info = env.reset(seed=seed)
            state = obs["proprio"].astype(np.float64)  # joint positions then velocities
            shipped_policy.reset()
            target = shipped_policy.select_action(obs["image"], info["command"], state)  # present: acted on
            assert np.all(np.isfinite(target))
            for blank in ("", "   "):
                shipped_policy.reset()
                with pytest.raises(CommandRefused, match="cannot read"):
                    shipped_policy.select_action(obs["image"], blank, state)
            colours = [c for c in instructions.colours if c not in {o["colour"] for o in info["objects"]}]
            shapes = [s for s in instructions.shapes if s not in {o["shape"] for o in info["objects"]}]
            if not shapes:
                continue
            shipped_policy.reset()
            with pytest.raises(CommandRefused) as caught:
                shipped_policy.select_action(obs["image"], f"touch the {colours[0]} {shapes[0]}", state)
            assert caught.value.refusal.kind == "not_in_view" and colours[0] in caught.value.refusal.reason
            absent_checked += 1
            shipped_policy.reset()
            with pytest.raises(CommandRefused) as caught:  # made-up words: refused by the text gate
                shipped_policy.select_action(obs["image"], "vorbl quizzet frandle", state)
            assert caught.value.refusal.kind == "not_an_object"
    finally:
        env.close()
    assert absent_checked >= 6
