"""The WordNet lexicon: words outside the CLIP's vocabulary read as known ones, never a training word changed."""

import itertools
import json
import shutil

import pytest
import torch

from vla_ros.envs.instructions import WORD_SPLITS, load_instructions, word_tokens
from vla_ros.grounding.lexicon import Lexicon
from vla_ros.grounding.wordnet import FILE_SHA256, WordNet, WordNetError, verb_lemmas, wordnet_dir
from vla_ros.paths import share_path


@pytest.fixture(scope="module")
def instructions():
    return load_instructions()


@pytest.fixture(scope="module")
def lexicon(instructions):
    return Lexicon.from_vocabulary(instructions=instructions)


def test_wordnet_is_the_pinned_release_and_a_tampered_or_missing_copy_is_refused(tmp_path, monkeypatch):
    wordnet = WordNet()
    assert [s.lemmas[0] for s in wordnet.senses("cube")][:2] == ["cube", "block"]
    for name in FILE_SHA256:
        shutil.copy(wordnet_dir() / name, tmp_path / name)
    WordNet(tmp_path)  # an intact copy anywhere is accepted
    with open(tmp_path / "data.noun", "r+b") as f:  # one byte of one gloss changed
        f.seek(-20, 2)
        byte = f.read(1)
        f.seek(-20, 2)
        f.write(b"x" if byte != b"x" else b"y")
    with pytest.raises(WordNetError, match="not WordNet 3.0's data.noun"):
        WordNet(tmp_path)
    monkeypatch.setenv("VLA_ROS_WORDNET_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(WordNetError, match="wordnet-base"):
        WordNet()


def test_verb_lemmas_are_single_words_of_the_pinned_index_and_a_tampered_copy_is_refused(tmp_path):
    verbs = verb_lemmas()
    assert len(verbs) == 8429 and verbs == sorted(set(verbs)) and all(v.isalpha() and v.islower() for v in verbs)
    assert {"push", "shove", "zoom"} <= set(verbs) and "princeton" not in verbs  # licence lines skipped
    shutil.copy(wordnet_dir() / "index.verb", tmp_path / "index.verb")
    assert verb_lemmas(tmp_path) == verbs
    with open(tmp_path / "index.verb", "ab") as f:
        f.write(b"zzzz v 1 0 1 0 00000000\n")
    with pytest.raises(WordNetError, match="not WordNet 3.0's index.verb"):
        verb_lemmas(tmp_path)
    with pytest.raises(WordNetError, match="wordnet-base"):
        verb_lemmas(tmp_path / "nowhere")


def test_validation_words_read_as_known_words_through_wordnet(lexicon):
    """The validation split's words (what the lexicon was checked on); words WordNet gives no colour or geometric
    sense for stay as written."""
    readings = {r.word: (r.known, r.kind) for r in lexicon.normalise("the cherry dice, canary barrel, apricot")[1]}
    assert readings == {"cherry": ("cerise", "colour"), "dice": ("cube", "shape"), "canary": ("yellow", "colour"),
                        "barrel": ("drum", "shape"), "apricot": ("peach", "colour")}
    assert lexicon.normalise("press on the fern spheroid") == ("press on the fern spheroid", [])
    # a sense that is not geometric does not count: "head" is a ship's toilet, a "can", but no cylinder
    assert lexicon.read("head") is None
    assert lexicon.normalise("qzkx fjwoa, the sandwich") == ("qzkx fjwoa, the sandwich", [])


def test_every_training_command_reads_exactly_as_written(lexicon, instructions):
    """The lexicon changes no word of the training vocabulary: what the CLIP and the policy were trained on is
    read as before, with or without it."""
    words = [*instructions.colours, *(w for ws in instructions.shape_words.values() for w in ws)]
    directions = [w for ws in instructions.direction_words.values() for w in ws]
    count = 0
    for task in instructions.templates.values():
        for template, colour, shape in itertools.product(task["train"] + task["heldout"], instructions.colours,
                                                         [w for ws in instructions.shape_words.values() for w in ws]):
            for direction in directions if "{direction}" in template else [""]:
                command = template.format(colour=colour, shape=shape, direction=direction)
                assert lexicon.normalise(command) == (command, []), command
                count += 1
    assert count > 500
    for phrase in [*lexicon.colours, *lexicon.shapes, *words]:
        assert lexicon.normalise(phrase)[1] == []


def test_the_lexicons_vocabulary_holds_no_word_split_word(lexicon, instructions):
    """What a checkpoint stores (the CLIP's known words) contains no validation or held-out word."""
    forbidden = set().union(*(instructions.word_splits[s].vocabulary() for s in WORD_SPLITS))
    stored = lexicon.to_dict()
    tokens = set().union(*(word_tokens(w) for key in ("colours", "shapes", "known_tokens") for w in stored[key]))
    assert len(stored["colours"]) > 300 and not tokens & forbidden


def test_lexicon_round_trips_and_malformed_records_are_refused(lexicon):
    again = Lexicon.from_dict(json.loads(json.dumps(lexicon.to_dict())))
    assert again.to_dict() == lexicon.to_dict()
    assert again.normalise("touch the canary dice")[0] == "touch the yellow cube"
    for bad in ({**lexicon.to_dict(), "source": "thesaurus"}, {**lexicon.to_dict(), "colours": "red"},
                {**lexicon.to_dict(), "shapes": [1]}, {**lexicon.to_dict(), "max_depth": 99}, "wordnet"):
        with pytest.raises(ValueError, match="lexicon"):
            Lexicon.from_dict(bad)


def test_the_encoder_embeds_a_command_as_its_reading(lexicon):
    """Both embeddings a command gets (the CLIP's and the text gate's sentence embedding) are its reading's."""
    from vla_ros.grounding.encoder import ClipEncoder

    encoder = ClipEncoder.from_pretrained(share_path("models", "clip"))
    plain = encoder.encode_text(["touch the yellow cube"])
    plain_sentence = encoder.encode_sentences(["touch the yellow cube"])
    unread = encoder.encode_text(["touch the canary dice"])
    encoder.set_lexicon(lexicon)
    assert encoder.reading("touch the canary dice") == "touch the yellow cube"
    assert torch.equal(encoder.encode_text(["touch the canary dice"]), plain)
    assert torch.equal(encoder.encode_sentences(["touch the canary dice"]), plain_sentence)
    encoder.set_lexicon(None)
    assert torch.equal(encoder.encode_text(["touch the canary dice"]), unread)


def test_a_policy_reads_through_its_checkpoints_lexicon_unless_told_not_to(tmp_path, lexicon):
    from vla_ros.policy.checkpoint import CheckpointError
    from vla_ros.policy.policy import Policy

    shipped = share_path("models", "policy")
    folder = tmp_path / "policy"
    folder.mkdir()
    for name in ("policy.safetensors", "clip"):
        (folder / name).symlink_to(shipped / name)
    config = json.loads((shipped / "config.json").read_text())
    config.pop("lexicon", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert Policy.load(folder).encoder.lexicon is None  # a checkpoint from before the lexicon reads as written
    config["lexicon"] = lexicon.to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    assert Policy.load(folder).encoder.reading("go to the canary dice") == "go to the yellow cube"
    assert Policy.load(folder, lexicon=False).encoder.lexicon is None
    config["lexicon"]["source"] = "thesaurus"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="config.json.*lexicon"):
        Policy.load(folder)


def test_calibration_with_a_lexicon_also_judges_the_validation_words_as_written(lexicon):
    """New words WordNet cannot read must pass the rule too: validation_words' commands count twice."""
    from vla_ros.commands.calibrate_refusal import UNREAD_SET, calibrate
    from vla_ros.policy.policy import Policy

    policy = Policy.load(share_path("models", "policy"), lexicon=False)
    policy.encoder.set_lexicon(lexicon)
    report = calibrate(policy, scenes=8, false_refusal=0.2, progress=False, text_gate=False)
    assert report["rule"]["calibration"]["valid_splits"][-1] == UNREAD_SET
    assert report["valid"][UNREAD_SET]["scenes"] == report["valid"]["validation_words"]["scenes"] == 8
    assert policy.encoder.lexicon is lexicon  # restored after the commands were judged as written


def test_wordnet_lookups_find_what_a_full_parse_of_the_index_finds():
    """index.noun is searched, not parsed (a parse stalled the node's e-stop); both agree, ends included."""
    index = {}
    with open(wordnet_dir() / "index.noun", encoding="latin-1") as f:
        for line in f:
            if not line.startswith(" "):
                fields = line.split()
                index[fields[0]] = tuple(int(o) for o in fields[6 + int(fields[3]):])
    wordnet = WordNet()
    keys = sorted(index)
    for key in [*keys[:3], *keys[-3:], *keys[:: len(keys) // 500]]:
        assert tuple(s.offset for s in wordnet.senses(key)) == index[key], key
    for unknown in ("", "zzzzzzz", "qzkx", "aaaaaa"):
        assert wordnet.senses(unknown) == []


def test_a_stream_of_made_up_words_does_not_grow_the_lexicons_memory(lexicon, monkeypatch):
    from vla_ros.grounding import lexicon as lexicon_module
    from vla_ros.grounding import wordnet as wordnet_module

    monkeypatch.setattr(lexicon_module, "CACHE_SIZE", 50)
    monkeypatch.setattr(wordnet_module, "CACHE_SIZE", 50)
    fresh = Lexicon.from_dict(lexicon.to_dict())
    for i in range(400):
        fresh.normalise(f"touch the qz{i}x cube and the {i}red")
    assert len(fresh._cache) <= 50 and len(fresh.wordnet._offsets) <= 50
    assert fresh.normalise("touch the canary dice")[0] == "touch the yellow cube"
