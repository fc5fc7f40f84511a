"""``vla-ros calibrate-refusal``: choose a policy's refusal rule on validation scenes and store it.

Valid commands are the ``train`` split's, the ``validation_words`` split's (words no caption and no evaluation
split uses), and ``validation_phrasings``: the validation split's own frames filled with training words (a new
phrasing of known words), each on its episode's first frame, a fifth each with distractors and camera jitter.
Invalid ones are the ``corrupted`` perturbation's on plain scenes (an absent colour-shape pair, made-up words).
All scenes use seeds from :data:`CALIBRATION_SEED` on, which neither CLIP training, train-clip's evaluation nor
``vla-ros eval`` use.

``--text-gate`` (the default with a pretrained text tower) first fits the text gate
(:mod:`vla_ros.grounding.text_gate`) and sets its threshold to refuse at most half the ``--false-refusal`` budget
of each set of valid commands. Each bar is then the quantile of the valid commands it judges that refuses the other
half.
``--statistic two-bars`` (the default; see :mod:`vla_ros.grounding.refusal`) judges commands whose familiarity
reaches a boundary by their contrast and the others by presence; ``familiarity-slope`` lets one presence bar rise
linearly with familiarity; ``presence`` is one bar. The boundary (or slope) is the one, on a grid, that refuses
the most of the least-refused corrupted kind on these validation scenes. Written to the checkpoint's
``config.json`` as ``refusal`` (see :class:`vla_ros.grounding.refusal.RefusalRule`).

``--lexicon`` (the default with a pretrained text tower) reads commands through the CLIP's lexicon
(:mod:`vla_ros.grounding.lexicon`: a word outside the CLIP's training vocabulary read as a known one by WordNet)
while calibrating, and stores the lexicon as ``lexicon`` beside the rule: both decide how a command is read. The
validation words' commands are then judged twice, as read and as written (``validation_words_unread``): the rule
must also pass new words that WordNet gives no reading for.

Report (``--json``): ``{"checkpoint", "scenes", "false_refusal_target", "rule", "valid": {"<split>":
{"scenes", "false_refusal", "refused_by_text_gate", "median_presence"}}, "invalid": {"<kind>": {"scenes",
"refused", "refused_by_text_gate", "median_presence"}}, "auroc_presence"}``.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

from vla_ros.grounding.refusal import threshold_at_false_refusal
from vla_ros.reporting import add_json_argument

SLOPES = tuple(round(0.05 * k, 2) for k in range(41))  # familiarity slopes tried: 0, 0.05, ..., 2
BOUNDARIES = tuple(round(0.70 + 0.01 * k, 2) for k in range(29))  # two-bar familiarity boundaries: 0.70 .. 0.98
MIN_REGIME_COMMANDS = 30  # a bar is a quantile of at least this many valid commands
STATISTIC_CHOICES = ("two-bars", "familiarity-slope", "presence")
CALIBRATION_SEED = 3_000_000  # scene seeds no training run or evaluation (eval-clip: 2_000_000..) uses
# valid commands: two env splits, and validation_words' frames filled with training words (a new phrasing)
VALID_SETS = ("train", "validation_words", "validation_phrasings")
VALID_SEED_OFFSETS = {"train": 0, "validation_words": 1, "validation_phrasings": 3}  # x scenes; 2: corrupted
# with a lexicon, validation_words' commands are also judged as written: new words the lexicon cannot read
UNREAD_SET = "validation_words_unread"


def add_arguments(parser) -> None:
    """Options of ``vla-ros calibrate-refusal``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--scenes", type=int, default=600, help="scenes per valid split and for the invalid "
                        "commands (default: 600)")
    parser.add_argument("--false-refusal", type=float, default=0.005,
                        help="share of valid validation commands the rule may refuse (default: 0.005)")
    parser.add_argument("--statistic", choices=STATISTIC_CHOICES, default="two-bars",
                        help="two-bars (default): a bar for commands near the trained captions and a lower one for "
                        "the rest; familiarity-slope: a bar rising linearly with familiarity; presence: one bar")
    parser.add_argument("--text-gate", action=argparse.BooleanOptionalAction, default=None,
                        help="first refuse commands that do not read as naming an object (default: on when the "
                        "CLIP has a pretrained text tower)")
    parser.add_argument("--lexicon", action=argparse.BooleanOptionalAction, default=None,
                        help="read words outside the CLIP's vocabulary through WordNet (vla_ros.grounding.lexicon) "
                        "before calibrating, and store the lexicon with the rule (default: on when the CLIP has a "
                        "pretrained text tower)")
    parser.add_argument("--dry-run", action="store_true", help="report only; leave config.json as it is")
    add_json_argument(parser)


def calibrate(policy, scenes: int, false_refusal: float, progress: bool = True, statistic: str = "two-bars",
              text_gate: bool | None = None, seed: int = 0) -> dict:
    """Scores, rule and report for ``policy`` (a :class:`vla_ros.policy.policy.Policy`).

    ``text_gate`` None: fit one when the CLIP has a pretrained text tower. With the text gate, half the
    false-refusal budget goes to the gate and half to the presence bars.
    """
    from dataclasses import replace

    import numpy as np

    from vla_ros.grounding.data import generate_scenes
    from vla_ros.grounding.refusal import PRESENCE_STATISTIC, RefusalRule, auroc, command_statistics, reference_captions
    from vla_ros.grounding.text_gate import TextGate, embed_sentences, fit_text_gate

    env = policy.config.get("env", {})
    render = dict(image_size=int(env.get("image_size", 64)), distractor_fraction=0.2, jitter_fraction=0.2,
                  progress=progress, robot=env.get("robot"))  # the scenes of the robot the policy drives
    sigma = 0.75
    references = reference_captions() if statistic != "presence" else ()
    commands, parts, split_of = [], [], []
    lexicon = policy.encoder.lexicon
    valid_sets = VALID_SETS + ((UNREAD_SET,) if lexicon is not None else ())
    rendered = {}
    for k, split in enumerate(valid_sets):
        if split == UNREAD_SET:  # validation_words' scenes and commands, new words read as written
            data, texts = rendered["validation_words"]
        else:
            data = generate_scenes(scenes, seed=CALIBRATION_SEED + VALID_SEED_OFFSETS[split] * scenes,
                                   split="train" if split == "validation_phrasings" else split, **render)
            texts = [str(c) for c in data.commands]
            if split == "validation_phrasings":
                texts = validation_phrasings(data, policy.config.get("task", "reach"), seed=k)
            rendered[split] = data, texts
        with _as_written(policy.encoder, split == UNREAD_SET):
            parts.append(command_statistics(policy.encoder, data.images, texts, sigma, references))
        commands += texts
        split_of += [split] * len(texts)
    valid = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    split_of = np.asarray(split_of)
    corrupted = generate_scenes(scenes, seed=CALIBRATION_SEED + 2 * scenes, split="train",
                                corrupted=True, **{**render, "distractor_fraction": 0.0, "jitter_fraction": 0.0})
    bad_commands = [str(c) for c in corrupted.commands]
    bad = command_statistics(policy.encoder, corrupted.images, bad_commands, sigma, references)
    kinds = np.asarray(corrupted.kinds)
    names = sorted(set(kinds.tolist()))

    if text_gate is None:
        text_gate = policy.encoder.pretrained_text
    if text_gate and not policy.encoder.pretrained_text:
        raise ValueError("the text gate reads a pretrained text tower's sentence embedding; this CLIP has none")
    gate, budget = None, false_refusal
    passes, bad_passes = np.ones(len(commands), bool), np.ones(len(bad_commands), bool)
    if text_gate:
        weights, bias = fit_text_gate(policy.encoder, seed=seed)
        fitted = TextGate(weights=tuple(weights.tolist()), bias=bias, threshold=0.0)
        valid_gate = np.empty(len(commands))
        for as_written in (False, True) if lexicon is not None else (False,):  # the unread set: as written
            rows = (split_of == UNREAD_SET) == as_written
            with _as_written(policy.encoder, as_written):
                valid_gate[rows] = fitted.scores(embed_sentences(policy.encoder, list(np.asarray(commands)[rows])))
        bad_gate = fitted.scores(embed_sentences(policy.encoder, bad_commands))
        budget = false_refusal / 2
        # each valid set keeps its share: the gate refuses at most `budget` of any one of them
        threshold = min(threshold_at_false_refusal(valid_gate[split_of == split], budget) for split in valid_sets)
        gate = replace(fitted, threshold=threshold,
                       calibration={"positives": "object captions in the CLIP's training vocabulary (4,000)",
                                    "negatives": "phrases of made-up words (4,000)", "seed": seed,
                                    "false_refusal_target": budget})
        passes, bad_passes = valid_gate >= gate.threshold, bad_gate >= gate.threshold

    candidates = []
    kept = {key: values[passes] for key, values in valid.items()}
    for option in _bar_options(statistic, kept, budget):
        valid_refused = ~passes | option["refuses"](valid)
        bad_refused = ~bad_passes | option["refuses"](bad)
        least = min(float(bad_refused[kinds == kind].mean()) for kind in names)
        candidates.append((least, -float(valid_refused.mean()), option, valid_refused, bad_refused))
    least, _, option, valid_refused, bad_refused = max(candidates, key=lambda c: (c[0], c[1]))
    calibration = {"scenes_per_split": scenes, "valid_splits": list(valid_sets), "seed": CALIBRATION_SEED,
                   "false_refusal_target": false_refusal, "clip_sha256": policy.encoder.weights_sha256}
    rule = RefusalRule(sigma_patches=sigma, calibration=calibration, text_gate=gate,
                       reference_captions=references if option["rule"]["statistic"] != PRESENCE_STATISTIC else (),
                       **option["rule"])
    return {
        "scenes": scenes, "false_refusal_target": false_refusal, "rule": rule.to_dict(),
        "valid": {split: {"scenes": int((split_of == split).sum()),
                          "false_refusal": float(valid_refused[split_of == split].mean()),
                          "refused_by_text_gate": float((~passes)[split_of == split].mean()),
                          "median_presence": float(np.median(valid["presence"][split_of == split]))}
                  for split in valid_sets},
        "invalid": {kind: {"scenes": int((kinds == kind).sum()),
                           "refused": float(bad_refused[kinds == kind].mean()),
                           "refused_by_text_gate": float((~bad_passes)[kinds == kind].mean()),
                           "median_presence": float(np.median(bad["presence"][kinds == kind]))} for kind in names},
        "auroc_presence": auroc(valid["presence"], bad["presence"]),
    }


@contextmanager
def _as_written(encoder, as_written: bool):
    """Within the block, ``encoder`` reads commands as written when ``as_written`` (its lexicon set aside)."""
    lexicon = encoder.lexicon
    if as_written:
        encoder.set_lexicon(None)
    try:
        yield
    finally:
        if as_written:
            encoder.set_lexicon(lexicon)


def validation_phrasings(data, task: str, seed: int = 0) -> list[str]:
    """Commands for ``data``'s targets in the ``validation_words`` split's own frames, but with training words.

    A command in known words and a new phrasing: what held-out phrasings are, on validation frames. ``task``
    ``mixed`` (a reach + push checkpoint) draws from both tasks' frames.
    """
    import numpy as np

    from vla_ros.envs.instructions import TASKS, load_instructions

    instructions = load_instructions()
    templates = instructions.word_splits["validation_words"].templates
    frames = [f for t in TASKS for f in templates[t]] if task == "mixed" else templates[task]
    rng = np.random.default_rng(seed)
    directions = [w for words in instructions.direction_words.values() for w in words]
    out = []
    for i in range(len(data.images)):
        target = data.target[i]
        words = instructions.shape_words[data.shape_names[data.shapes[i, target]]]
        out.append(frames[rng.integers(len(frames))].format(
            colour=data.colour_names[data.colours[i, target]], shape=words[rng.integers(len(words))],
            direction=directions[rng.integers(len(directions))]))
    return out


def _bar_options(statistic: str, valid: dict, false_refusal: float):
    """Candidate rules for ``statistic``: {"refuses": statistics -> (N,) bool, "rule": RefusalRule fields}.

    Each bar is the ``false_refusal`` quantile of the valid commands it judges. ``two-bars`` also offers one
    presence bar for all commands (chosen when no boundary leaves enough valid commands on each side, or when
    none refuses more).
    """
    import numpy as np

    from vla_ros.grounding.refusal import FAMILIARITY_SLOPE_STATISTIC, PRESENCE_STATISTIC, TWO_BAR_STATISTIC

    presence, familiar, contrast = valid["presence"], valid["familiarity"], valid["contrast"]
    if statistic != "familiarity-slope":  # one bar for all: also the two-bar rule's fallback
        threshold = threshold_at_false_refusal(presence, false_refusal)
        yield {"refuses": lambda s, t=threshold: s["presence"] < t,
               "rule": {"threshold": threshold, "statistic": PRESENCE_STATISTIC}}
    else:
        for slope in SLOPES:
            threshold = threshold_at_false_refusal(presence - slope * familiar, false_refusal)
            yield {"refuses": lambda s, t=threshold, k=slope: s["presence"] < t + k * s["familiarity"],
                   "rule": {"threshold": threshold, "statistic": FAMILIARITY_SLOPE_STATISTIC,
                            "familiarity_slope": slope}}
    if statistic == "two-bars":
        for boundary in BOUNDARIES:
            familiar_set = familiar >= boundary
            if min(familiar_set.sum(), (~familiar_set).sum()) < MIN_REGIME_COMMANDS:
                continue
            high = threshold_at_false_refusal(contrast[familiar_set], false_refusal)
            low = threshold_at_false_refusal(presence[~familiar_set], false_refusal)
            yield {"refuses": lambda s, b=boundary, h=high, lo=low: np.where(
                       s["familiarity"] >= b, s["contrast"] < h, s["presence"] < lo),
                   "rule": {"threshold": high, "statistic": TWO_BAR_STATISTIC, "unfamiliar_threshold": low,
                            "familiarity_boundary": boundary}}


def run(args) -> int:
    """Calibrate, print the table, store the rule in the checkpoint."""
    import torch

    from vla_ros.grounding.lexicon import Lexicon
    from vla_ros.paths import share_path
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    torch.set_num_threads(1)
    checkpoint = Path(args.checkpoint) if args.checkpoint else share_path("models", "policy")
    policy = Policy.load(checkpoint)
    use_lexicon = policy.encoder.pretrained_text if args.lexicon is None else args.lexicon
    lexicon = Lexicon.from_vocabulary() if use_lexicon else None
    policy.encoder.set_lexicon(lexicon)
    report = {"checkpoint": str(checkpoint), "lexicon": lexicon is not None,
              **calibrate(policy, args.scenes, args.false_refusal, statistic=args.statistic,
                          text_gate=args.text_gate)}
    rows = [{"commands": f"valid/{k}", "scenes": v["scenes"], "refused": v["false_refusal"],
             "by_text_gate": v["refused_by_text_gate"], "median_presence": v["median_presence"]}
            for k, v in report["valid"].items()]
    rows += [{"commands": f"invalid/{k}", "scenes": v["scenes"], "refused": v["refused"],
              "by_text_gate": v["refused_by_text_gate"], "median_presence": v["median_presence"]}
             for k, v in report["invalid"].items()]
    print(format_table(rows, ["commands", "scenes", "refused", "by_text_gate", "median_presence"]))
    print(describe_rule(report["rule"]) + f"; presence AUROC valid vs invalid {report['auroc_presence']:.4f}")
    if not args.dry_run:
        path = checkpoint / "config.json"
        config = json.loads(path.read_text())
        config["refusal"] = report["rule"]
        config.pop("lexicon", None)
        if lexicon is not None:
            config["lexicon"] = lexicon.to_dict()
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"refusal rule written to {path}")
    write_json(args.json, report)
    return 0


def describe_rule(rule: dict) -> str:
    """One line naming a stored rule's statistic and bars."""
    text = f"statistic {rule['statistic']}, bar {rule['threshold']:.4f}"
    if rule.get("familiarity_slope"):
        text += f" + {rule['familiarity_slope']:.2f} x familiarity"
    if rule.get("familiarity_boundary") is not None:
        text = (f"statistic {rule['statistic']}: contrast >= {rule['threshold']:.4f} at familiarity >= "
                f"{rule['familiarity_boundary']:.2f}, else presence >= {rule['unfamiliar_threshold']:.4f}")
    if rule.get("text_gate"):
        text += f"; text gate threshold {rule['text_gate']['threshold']:.3f}"
    return text
