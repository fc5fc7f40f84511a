"""A trained skill-reader policy with its mean-pooled reader swapped for a token reader, nothing else changed.

Usage: ``python -m research.token_reader_swap CHECKPOINT OUT [--seed N] [--filled-variants N]``

The policy sees the reader only through five skill probabilities (:mod:`vla_ros.policy.skill_reader`). A token
reader, fitted on the same training commands, reads every training command with the same skill and about as
surely, so the policy's FiLM gets what it was trained on there; where the two readers differ (a new verb or
frame) the swap shows what the token reader alone changes, without a new training run. The fit uses the run's
own seed (``config["training"]["config"]["seed"]``) unless ``--seed`` is given. ``OUT`` is a checkpoint folder
(``network.skill_reader_tokens``) that ``vla-ros eval`` reads; the report gives both readers' probabilities of the
right skill on the training commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch


def swap_reader(checkpoint: Path, out: Path, seed: int | None = None, filled_variants: int = 0) -> dict:
    """Write ``out``: ``checkpoint`` with a token reader fitted into its skill buffers; returns the report."""
    from vla_ros.envs.instructions import load_instructions
    from vla_ros.policy.checkpoint import save_checkpoint
    from vla_ros.policy.policy import Policy
    from vla_ros.policy.skill_reader import CommandSkillReader, fit_from_encoder, training_commands

    policy = Policy.load(checkpoint)
    network, config = policy.network, dict(policy.config)
    fusion = network.features_extractor.fusion
    if not fusion.skill_reader_width or fusion.skill_reader_tokens:
        raise ValueError(f"{checkpoint}: not a policy with a mean-pooled skill reader")
    if seed is None:
        seed = int(config.get("training", {}).get("config", {}).get("seed", 0))
    instructions = load_instructions()
    commands, labels = training_commands(instructions, seed=seed + 1)  # other draws than either fit's
    before = fusion.skills(policy.encoder.encode_sentences(commands))
    fit = fit_from_encoder(policy.encoder, instructions, seed=seed, filled_variants=filled_variants, tokens=True)
    with torch.no_grad():
        fusion.skill_weight.copy_(fit.weight)
        fusion.skill_bias.copy_(fit.bias)
    fusion.skill_reader_tokens = True
    after = torch.softmax(CommandSkillReader.of_network(network, policy.encoder).logits(commands), -1)
    rows = torch.arange(len(labels))
    label = torch.as_tensor(labels)
    config["network"] = {**config["network"], "skill_reader_tokens": True}
    config.pop("format", None)
    config.setdefault("metrics", {})["skill_reader_swapped"] = {
        "from": str(checkpoint), "seed": seed, "filled_variants": filled_variants,
        "train_accuracy": fit.train_accuracy, "commands": fit.num_commands}
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(checkpoint, out, ignore=shutil.ignore_patterns("onnx", "done_head.safetensors"))
    config.pop("done", None)  # a done head was fitted on the old reader's probabilities
    clip = config["clip"]
    if not Path(clip["path"]).is_absolute():  # a relative CLIP path stays valid from the new folder
        clip["path"] = os.path.relpath((Path(checkpoint) / clip["path"]).resolve(), Path(out).resolve())
    save_checkpoint(out, network, config)
    report = {"checkpoint": str(checkpoint), "out": str(out), "seed": seed, "commands": len(labels),
              "train_accuracy_fit": fit.train_accuracy}
    for name, probs in (("sentence_reader", before), ("token_reader", after)):
        right = probs[rows, label].numpy()
        report[name] = {"accuracy": float((probs.argmax(-1) == label).float().mean()),
                        "median_probability_right": float(np.median(right)),
                        "p10_probability_right": float(np.percentile(right, 10))}
    return report


def main(argv=None) -> dict:
    """Swap the reader, print both readers' figures on training commands and return the report."""
    from vla_ros.reporting import format_table

    parser = argparse.ArgumentParser(prog="python -m research.token_reader_swap", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder with a mean-pooled skill reader")
    parser.add_argument("out", type=Path, help="the checkpoint folder to write")
    parser.add_argument("--seed", type=int, help="the token reader's fit seed (default: the run's seed)")
    parser.add_argument("--filled-variants", type=int, default=0, help="as the recipe's skill_reader_filled")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = swap_reader(args.checkpoint, args.out, args.seed, args.filled_variants)
    rows = [{"reader": name, "accuracy": f"{100 * report[name]['accuracy']:.1f}%",
             "median p(right)": f"{report[name]['median_probability_right']:.3f}",
             "10th pct p(right)": f"{report[name]['p10_probability_right']:.3f}"}
            for name in ("sentence_reader", "token_reader")]
    print(format_table(rows, ["reader", "accuracy", "median p(right)", "10th pct p(right)"]))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}))
    return report


if __name__ == "__main__":
    main()
