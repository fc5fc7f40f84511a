"""Presence statistics compared: which one separates valid commands from corrupted ones on validation scenes.

Usage: ``python -m research.presence_statistics CLIP_DIR [--scenes 200] [--patch-stitch 2] [--false-refusal 0.005]``

Renders the validation scenes ``vla-ros calibrate-refusal`` uses (seeds from its ``CALIBRATION_SEED``: ``train``
and ``validation_words`` commands are valid, the ``corrupted`` perturbation's are not) and, per command, the
region-text similarity map at every patch centre. Compares statistics of that map:

- ``max``: the best region's similarity (what ``vla_ros.grounding.refusal`` uses);
- ``z``: that best score standardised over the map;
- ``max-alt``: the best score minus the best score any palette caption ("the red cube", ...) gets at that region;
- ``max-familiarity``: the best score minus ``slope`` times the command's closest cosine to a palette caption
  (a threshold that rises for commands near known captions), the slope chosen for the most refusals.

For each it prints the AUROC and the share of each corrupted kind refused at the threshold that refuses
``--false-refusal`` of the valid commands, plus quantiles of the best score per split.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv=None) -> dict:
    """Run the comparison; return {statistic: {"auroc", "refused": {kind: share}}}."""
    from vla_ros.commands.calibrate_refusal import CALIBRATION_SEED
    from vla_ros.envs.instructions import load_instructions
    from vla_ros.grounding.data import generate_scenes
    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.grounding.refusal import auroc, threshold_at_false_refusal
    from vla_ros.grounding.regions import patch_centres, region_embeddings

    parser = argparse.ArgumentParser(prog="python -m research.presence_statistics", description=__doc__.splitlines()[0])
    parser.add_argument("clip", help="CLIP checkpoint folder")
    parser.add_argument("--scenes", type=int, default=200, help="scenes per valid split and corrupted (default 200)")
    parser.add_argument("--patch-stitch", type=int, default=2, help="shift-and-stitch factor (default 2, the policy's)")
    parser.add_argument("--false-refusal", type=float, default=0.005, help="allowed false refusals (default 0.005)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    encoder = ClipEncoder.from_pretrained(args.clip, patch_stitch=args.patch_stitch)
    sigma = 0.75 * args.patch_stitch
    instructions = load_instructions()
    known = encoder.encode_text([f"the {c} {s}" for c, s in instructions.all_combos])
    centres = patch_centres(encoder.grid_size, encoder.image_size)

    def features(data) -> np.ndarray:
        rows = []
        for start in range(0, len(data), 100):
            patches = encoder.encode_images(data.images[start:start + 100]).patches
            text = encoder.encode_text([str(c) for c in data.commands[start:start + 100]])
            regions = region_embeddings(patches, centres.expand(len(patches), -1, -1), encoder.grid_size,
                                        encoder.image_size, sigma)
            sims = (regions @ text.unsqueeze(-1)).squeeze(-1)
            best = sims.max(1).values
            at_best = regions[torch.arange(len(regions)), sims.argmax(1)]
            rows.append(torch.stack([best, (best - sims.mean(1)) / (sims.std(1) + 1e-6),
                                     best - (at_best @ known.T).max(1).values, (text @ known.T).max(1).values], 1))
        return torch.cat(rows).numpy()

    render = dict(distractor_fraction=0.2, jitter_fraction=0.2)
    valid = {split: features(generate_scenes(args.scenes, seed=CALIBRATION_SEED + k * args.scenes, split=split,
                                             **render))
             for k, split in enumerate(("train", "validation_words"))}
    corrupted = generate_scenes(args.scenes, seed=CALIBRATION_SEED + 2 * args.scenes, split="train", corrupted=True)
    bad = features(corrupted)
    kinds = np.asarray(corrupted.kinds)
    pooled = np.concatenate(list(valid.values()))

    def judge(valid_scores, bad_scores) -> dict:
        threshold = threshold_at_false_refusal(valid_scores, args.false_refusal)
        return {"auroc": auroc(valid_scores, bad_scores),
                "refused": {kind: float((bad_scores[kinds == kind] < threshold).mean()) for kind in sorted(set(kinds))}}

    results = {name: judge(pooled[:, j], bad[:, j]) for j, name in enumerate(("max", "z", "max-alt"))}
    best = None
    for slope in np.linspace(0.0, 2.0, 41):
        entry = judge(pooled[:, 0] - slope * pooled[:, 3], bad[:, 0] - slope * bad[:, 3])
        if best is None or min(entry["refused"].values()) > min(best["refused"].values()):
            best = {**entry, "slope": float(slope)}
    results["max-familiarity"] = best
    print(f"{'statistic':16s} {'AUROC':>6s}  refused at {args.false_refusal:.3f} false refusals")
    for name, entry in results.items():
        print(f"{name:16s} {entry['auroc']:6.3f}  " + ", ".join(f"{k} {v:.3f}" for k, v in entry["refused"].items())
              + (f"  (slope {entry['slope']:.2f})" if "slope" in entry else ""))
    for split, rows in valid.items():
        print(f"best score, valid {split}: 1st/5th/50th percentile {np.percentile(rows[:, 0], [1, 5, 50]).round(3)}")
    for kind in sorted(set(kinds)):
        print(f"best score, {kind}: 50th/95th percentile {np.percentile(bad[kinds == kind, 0], [50, 95]).round(3)}")
    return results


if __name__ == "__main__":
    main()
