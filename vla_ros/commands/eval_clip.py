"""``vla-ros eval-clip``: zero-shot grounding accuracy and retrieval R@1 of a CLIP checkpoint.

Renders held-out scenes (seeds that training never uses) for the env's ``train`` split (training
colour-shape combos) and its ``heldout_combos`` split (the commanded object is a combo never seen
in training), asks the CLIP which object on the table each command means (given the objects'
pixels, and densely over the patch grid without them), and measures image-text
retrieval on the training-combo scenes. Prints a table; ``--json`` writes::

    {"zero_shot_accuracy": {"train_combos", "heldout_combos"},
     "dense_pick_accuracy": {"train_combos", "heldout_combos"},
     "dense_pick_errors": {"train_combos", "heldout_combos"}: {"same_colour", "same_shape", "other"},
     "retrieval_r1": {"image_to_text", "text_to_image"}, "scenes", ...}
"""

from __future__ import annotations

import argparse
import time

from vla_ros.reporting import add_json_argument, format_table, write_json

DEFAULT_SEED = 2_000_000  # far from training (0..) and in-training evaluation (1_000_000..) seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options: checkpoint, scenes per split, seed, image size, threads, --json."""
    parser.add_argument("--checkpoint", default=None,
                        help="CLIP checkpoint folder (default: the shipped models/clip)")
    parser.add_argument("--scenes", type=int, default=500, help="scenes per split (default: 500)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"first scene seed (default: {DEFAULT_SEED})")
    parser.add_argument("--image-size", type=int, default=None,
                        help="render size (default: the model's input size)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and report."""
    import torch

    from vla_ros.envs.instructions import load_instructions
    from vla_ros.grounding.data import CaptionSampler, generate_scenes
    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.grounding.evaluation import dense_picks, pick_error_kinds, retrieval_r1, zero_shot_accuracy
    from vla_ros.paths import share_path

    if args.scenes < 1:
        raise SystemExit("--scenes must be >= 1")
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(share_path("models", "clip"))
    encoder = ClipEncoder.from_pretrained(checkpoint, device=args.device)
    sampler = CaptionSampler.from_instructions(load_instructions())
    start = time.time()
    image_size = args.image_size or encoder.image_size
    data = {split: generate_scenes(args.scenes, seed=args.seed, split=split, image_size=image_size)
            for split in ("train", "heldout_combos")}
    accuracy = {"train_combos": zero_shot_accuracy(encoder, data["train"]),
                "heldout_combos": zero_shot_accuracy(encoder, data["heldout_combos"])}
    dense, dense_errors = {}, {}
    for name, split in (("train_combos", "train"), ("heldout_combos", "heldout_combos")):
        picks = dense_picks(encoder, data[split])
        dense[name] = float((picks == data[split].target).mean())
        dense_errors[name] = pick_error_kinds(data[split], picks)
    retrieval = retrieval_r1(encoder, data["train"], sampler)
    report = {
        "zero_shot_accuracy": accuracy,
        "dense_pick_accuracy": dense,
        "dense_pick_errors": dense_errors,
        "retrieval_r1": retrieval,
        "scenes": args.scenes,
        "checkpoint": checkpoint,
        "weights_sha256": encoder.weights_sha256,
        "seed": args.seed,
        "image_size": image_size,
        "objects_per_scene": int(data["train"].valid.sum(axis=1).max()),
        "retrieval_candidates": args.scenes,
        "wall_time_s": round(time.time() - start, 1),
    }
    rows = [
        {"metric": "zero-shot object pick, training combos", "value": accuracy["train_combos"]},
        {"metric": "zero-shot object pick, held-out combos", "value": accuracy["heldout_combos"]},
        {"metric": "dense region pick (no object pixels), training combos", "value": dense["train_combos"]},
        {"metric": "dense region pick (no object pixels), held-out combos", "value": dense["heldout_combos"]},
        *({"metric": f"  wrong pick, held-out combos: {kind.replace('_', ' ')}", "value": share}
          for kind, share in dense_errors["heldout_combos"].items()),
        {"metric": f"retrieval R@1 image->text (of {args.scenes})", "value": retrieval["image_to_text"]},
        {"metric": f"retrieval R@1 text->image (of {args.scenes})", "value": retrieval["text_to_image"]},
    ]
    print(f"CLIP {checkpoint} (sha256 {encoder.weights_sha256[:12]}), {args.scenes} scenes per split, "
          f"seeds from {args.seed}")
    print(format_table(rows, ["metric", "value"]))
    write_json(args.json, report)
    return 0
