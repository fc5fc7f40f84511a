"""``vla-ros calibrate-refusal``: choose a policy's refusal threshold on validation scenes and store it.

Valid commands are the ``train`` split's and the ``validation_words`` split's (words no caption and no evaluation
split uses) on their episodes' first frames, a fifth each with distractors and camera jitter; invalid ones are
the ``corrupted`` perturbation's on plain scenes (an absent colour-shape pair, made-up words). All scenes use seeds from
:data:`CALIBRATION_SEED` on, which neither CLIP training, train-clip's evaluation nor ``vla-ros eval`` use. The
threshold is the ``--false-refusal`` quantile of the valid scores. With ``--familiarity`` (the default) the score
is the presence minus a slope times the command's familiarity (see :mod:`vla_ros.grounding.refusal`); the slope
is the one, on a grid, under which the threshold refuses the most of the least-refused corrupted kind on these
validation scenes. Written to the checkpoint's ``config.json`` as ``refusal`` (see
:class:`vla_ros.grounding.refusal.RefusalRule`).

Report (``--json``): ``{"checkpoint", "scenes", "false_refusal_target", "rule", "valid": {"<split>":
{"scenes", "false_refusal"}}, "invalid": {"<kind>": {"scenes", "refused"}}, "auroc"}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vla_ros.reporting import add_json_argument

SLOPES = tuple(round(0.05 * k, 2) for k in range(41))  # familiarity slopes tried: 0, 0.05, ..., 2
CALIBRATION_SEED = 3_000_000  # scene seeds no training run or evaluation (eval-clip: 2_000_000..) uses
VALID_SPLITS = ("train", "validation_words")


def add_arguments(parser) -> None:
    """Options of ``vla-ros calibrate-refusal``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--scenes", type=int, default=600, help="scenes per valid split and for the invalid "
                        "commands (default: 600)")
    parser.add_argument("--false-refusal", type=float, default=0.005,
                        help="share of valid validation commands the threshold may refuse (default: 0.005)")
    parser.add_argument("--familiarity", action=argparse.BooleanOptionalAction, default=True,
                        help="judge each command against a bar that rises with its familiarity (default: on)")
    parser.add_argument("--dry-run", action="store_true", help="report only; leave config.json as it is")
    add_json_argument(parser)


def calibrate(policy, scenes: int, false_refusal: float, progress: bool = True, use_familiarity: bool = True) -> dict:
    """Scores, threshold and report for ``policy`` (a :class:`vla_ros.policy.policy.Policy`)."""
    import numpy as np

    from vla_ros.grounding.data import generate_scenes
    from vla_ros.grounding.refusal import (
        PRESENCE_STATISTIC,
        STATISTICS,
        RefusalRule,
        auroc,
        frame_features,
        reference_captions,
        threshold_at_false_refusal,
    )

    env = policy.config.get("env", {})
    render = dict(image_size=int(env.get("image_size", 64)), distractor_fraction=0.2, jitter_fraction=0.2,
                  progress=progress)
    sigma = 0.75
    references = reference_captions() if use_familiarity else ()
    valid = {}
    for k, split in enumerate(VALID_SPLITS):
        data = generate_scenes(scenes, seed=CALIBRATION_SEED + k * scenes, split=split, **render)
        valid[split] = frame_features(policy.encoder, data.images, [str(c) for c in data.commands], sigma, references)
    corrupted = generate_scenes(scenes, seed=CALIBRATION_SEED + len(VALID_SPLITS) * scenes, split="train",
                                corrupted=True, **{**render, "distractor_fraction": 0.0, "jitter_fraction": 0.0})
    invalid = frame_features(policy.encoder, corrupted.images, [str(c) for c in corrupted.commands], sigma, references)
    kinds = np.asarray(corrupted.kinds)
    names = sorted(set(kinds.tolist()))

    def choose(slope: float):
        score = {split: presence - slope * familiar for split, (presence, familiar) in valid.items()}
        bad = invalid[0] - slope * invalid[1]
        threshold = threshold_at_false_refusal(np.concatenate(list(score.values())), false_refusal)
        refused = {kind: float((bad[kinds == kind] < threshold).mean()) for kind in names}
        return min(refused.values()), slope, threshold, score, bad

    best = max((choose(slope) for slope in (SLOPES if use_familiarity else (0.0,))), key=lambda c: (c[0], -c[1]))
    _, slope, threshold, score, bad = best
    calibration = {"scenes_per_split": scenes, "valid_splits": list(VALID_SPLITS), "seed": CALIBRATION_SEED,
                   "false_refusal_target": false_refusal, "clip_sha256": policy.encoder.weights_sha256}
    if slope > 0:
        rule = RefusalRule(threshold=threshold, sigma_patches=sigma, statistic=STATISTICS[1], calibration=calibration,
                           familiarity_slope=slope, reference_captions=references)
    else:
        rule = RefusalRule(threshold=threshold, sigma_patches=sigma, statistic=PRESENCE_STATISTIC,
                           calibration=calibration)
    return {
        "scenes": scenes, "false_refusal_target": false_refusal, "rule": rule.to_dict(),
        "valid": {split: {"scenes": len(s), "false_refusal": float((s < threshold).mean()),
                          "median_presence": float(np.median(valid[split][0]))} for split, s in score.items()},
        "invalid": {kind: {"scenes": int((kinds == kind).sum()),
                           "refused": float((bad[kinds == kind] < threshold).mean()),
                           "median_presence": float(np.median(invalid[0][kinds == kind]))} for kind in names},
        "auroc": auroc(np.concatenate(list(score.values())), bad),
    }


def run(args) -> int:
    """Calibrate, print the table, store the rule in the checkpoint."""
    import torch

    from vla_ros.paths import share_path
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    torch.set_num_threads(1)
    checkpoint = Path(args.checkpoint) if args.checkpoint else share_path("models", "policy")
    policy = Policy.load(checkpoint)
    report = {"checkpoint": str(checkpoint),
              **calibrate(policy, args.scenes, args.false_refusal, use_familiarity=args.familiarity)}
    rows = [{"commands": f"valid/{k}", "scenes": v["scenes"], "refused": v["false_refusal"],
             "median_presence": v["median_presence"]} for k, v in report["valid"].items()]
    rows += [{"commands": f"invalid/{k}", "scenes": v["scenes"], "refused": v["refused"],
              "median_presence": v["median_presence"]} for k, v in report["invalid"].items()]
    print(format_table(rows, ["commands", "scenes", "refused", "median_presence"]))
    rule = report["rule"]
    print(f"statistic {rule['statistic']} (familiarity slope {rule['familiarity_slope']:.2f}), threshold "
          f"{rule['threshold']:.4f}, AUROC valid vs invalid {report['auroc']:.4f}")
    if not args.dry_run:
        path = checkpoint / "config.json"
        config = json.loads(path.read_text())
        config["refusal"] = report["rule"]
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"refusal rule written to {path}")
    write_json(args.json, report)
    return 0
