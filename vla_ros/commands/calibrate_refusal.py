"""``vla-ros calibrate-refusal``: choose a policy's refusal threshold on validation scenes and store it.

Valid commands are the ``train`` split's and the ``validation_words`` split's (words no caption and no evaluation
split uses) on their episodes' first frames, a fifth each with distractors and camera jitter; invalid ones are
the ``corrupted`` perturbation's on plain scenes (an absent colour-shape pair, made-up words). All scenes use seeds from
:data:`CALIBRATION_SEED` on, which neither CLIP training, train-clip's evaluation nor ``vla-ros eval`` use. The
threshold is the ``--false-refusal`` quantile of the valid scores; the corrupted scores only report how well it
separates. Written to the checkpoint's ``config.json`` as ``refusal`` (see
:class:`vla_ros.grounding.refusal.RefusalRule`).

Report (``--json``): ``{"checkpoint", "scenes", "false_refusal_target", "rule", "valid": {"<split>":
{"scenes", "false_refusal"}}, "invalid": {"<kind>": {"scenes", "refused"}}, "auroc"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from vla_ros.reporting import add_json_argument

CALIBRATION_SEED = 3_000_000  # scene seeds no training run or evaluation (eval-clip: 2_000_000..) uses
VALID_SPLITS = ("train", "validation_words")


def add_arguments(parser) -> None:
    """Options of ``vla-ros calibrate-refusal``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--scenes", type=int, default=600, help="scenes per valid split and for the invalid "
                        "commands (default: 600)")
    parser.add_argument("--false-refusal", type=float, default=0.005,
                        help="share of valid validation commands the threshold may refuse (default: 0.005)")
    parser.add_argument("--dry-run", action="store_true", help="report only; leave config.json as it is")
    add_json_argument(parser)


def calibrate(policy, scenes: int, false_refusal: float, progress: bool = True) -> dict:
    """Scores, threshold and report for ``policy`` (a :class:`vla_ros.policy.policy.Policy`)."""
    import numpy as np

    from vla_ros.grounding.data import generate_scenes
    from vla_ros.grounding.refusal import RefusalRule, auroc, score_frames, threshold_at_false_refusal

    env = policy.config.get("env", {})
    render = dict(image_size=int(env.get("image_size", 64)), distractor_fraction=0.2, jitter_fraction=0.2,
                  progress=progress)
    sigma = 0.75
    valid = {}
    for k, split in enumerate(VALID_SPLITS):
        data = generate_scenes(scenes, seed=CALIBRATION_SEED + k * scenes, split=split, **render)
        valid[split] = score_frames(policy.encoder, data.images, [str(c) for c in data.commands], sigma)
    corrupted = generate_scenes(scenes, seed=CALIBRATION_SEED + len(VALID_SPLITS) * scenes, split="train",
                                corrupted=True, **{**render, "distractor_fraction": 0.0, "jitter_fraction": 0.0})
    invalid = score_frames(policy.encoder, corrupted.images, [str(c) for c in corrupted.commands], sigma)
    all_valid = np.concatenate(list(valid.values()))
    threshold = threshold_at_false_refusal(all_valid, false_refusal)
    kinds = np.asarray(corrupted.kinds) if corrupted.kinds is not None else np.full(len(invalid), "corrupted")
    rule = RefusalRule(threshold=threshold, sigma_patches=sigma, calibration={
        "scenes_per_split": scenes, "valid_splits": list(VALID_SPLITS), "seed": CALIBRATION_SEED,
        "false_refusal_target": false_refusal, "clip_sha256": policy.encoder.weights_sha256})
    return {
        "scenes": scenes, "false_refusal_target": false_refusal, "rule": rule.to_dict(),
        "valid": {split: {"scenes": len(s), "false_refusal": float((s < threshold).mean()),
                          "median_presence": float(np.median(s))} for split, s in valid.items()},
        "invalid": {str(kind): {"scenes": int((kinds == kind).sum()),
                                "refused": float((invalid[kinds == kind] < threshold).mean()),
                                "median_presence": float(np.median(invalid[kinds == kind]))}
                    for kind in sorted(set(kinds.tolist()))},
        "auroc": auroc(all_valid, invalid),
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
    report = {"checkpoint": str(checkpoint), **calibrate(policy, args.scenes, args.false_refusal)}
    rows = [{"commands": f"valid/{k}", "scenes": v["scenes"], "refused": v["false_refusal"],
             "median_presence": v["median_presence"]} for k, v in report["valid"].items()]
    rows += [{"commands": f"invalid/{k}", "scenes": v["scenes"], "refused": v["refused"],
              "median_presence": v["median_presence"]} for k, v in report["invalid"].items()]
    print(format_table(rows, ["commands", "scenes", "refused", "median_presence"]))
    print(f"threshold {report['rule']['threshold']:.4f}, AUROC valid vs invalid {report['auroc']:.4f}")
    if not args.dry_run:
        path = checkpoint / "config.json"
        config = json.loads(path.read_text())
        config["refusal"] = report["rule"]
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"refusal rule written to {path}")
    write_json(args.json, report)
    return 0
