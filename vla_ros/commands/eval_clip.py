"""``vla-ros eval-clip``: zero-shot grounding accuracy and retrieval R@1 of a CLIP checkpoint.

Renders held-out scenes (seeds that training never uses) for the env's ``train`` split (training
colour-shape combos), its ``heldout_combos`` split (the commanded object is a combo never seen
in training) and, for a CLIP that can read them (a pretrained text tower), its ``heldout_words`` split
(colour and shape words no caption contains, by kind: colour, shape, both; with ``--lexicon`` also read
through the CLIP's WordNet lexicon, :mod:`vla_ros.grounding.lexicon`); asks the CLIP which object on
the table each command means (given the objects' pixels, and densely over the patch grid without them), and
measures image-text retrieval on the training-combo scenes and how well the best region score separates
valid commands (training combos) from corrupted ones (``presence``: AUROC). Prints a table; ``--json``
writes::

    {"zero_shot_accuracy": {"train_combos", "heldout_combos", "heldout_words"?, "heldout_words_lexicon"?},
     "dense_pick_accuracy": {...same keys},
     "dense_pick_errors": {"train_combos", "heldout_combos"}: {"same_colour", "same_shape", "other"},
     "heldout_words_by_kind", "heldout_words_lexicon_by_kind": {"colour"|"shape"|"both":
         {"zero_shot", "dense_pick", "scenes"}}?,
     "presence": {"auroc"}, "retrieval_r1": {"image_to_text", "text_to_image"}, "scenes", ...}
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
    parser.add_argument("--lexicon", action=argparse.BooleanOptionalAction, default=None,
                        help="also score the held-out words read through the CLIP's lexicon (WordNet; "
                        "vla_ros.grounding.lexicon) as heldout_words_lexicon (default: on with a pretrained text "
                        "tower)")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and report."""
    import numpy as np
    import torch

    from vla_ros.envs.instructions import load_instructions
    from vla_ros.grounding.data import CaptionSampler, generate_scenes
    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.grounding.evaluation import dense_picks, pick_error_kinds, retrieval_r1, zero_shot_hits
    from vla_ros.grounding.refusal import auroc, score_frames
    from vla_ros.paths import share_path

    if args.scenes < 1:
        raise SystemExit("--scenes must be >= 1")
    torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or str(share_path("models", "clip"))
    encoder = ClipEncoder.from_pretrained(checkpoint, device=args.device)
    sampler = CaptionSampler.from_instructions(load_instructions())
    start = time.time()
    image_size = args.image_size or encoder.image_size
    splits = {"train_combos": "train", "heldout_combos": "heldout_combos"}
    if encoder.pretrained_text:  # a text tower trained from scratch cannot read words it never saw
        splits["heldout_words"] = "heldout_words"
    data = {name: generate_scenes(args.scenes, seed=args.seed, split=split, image_size=image_size, progress=True)
            for name, split in splits.items()}
    lexicon = None
    if (encoder.pretrained_text if args.lexicon is None else args.lexicon) and "heldout_words" in splits:
        from vla_ros.grounding.lexicon import Lexicon

        lexicon = Lexicon.from_vocabulary()  # the same scenes, commands read through the CLIP's lexicon
        splits["heldout_words_lexicon"] = "heldout_words"
        data["heldout_words_lexicon"] = data["heldout_words"]
    hits, dense, dense_errors, picks = {}, {}, {}, {}
    for name in splits:
        reader = lexicon if name == "heldout_words_lexicon" else None
        if encoder.lexicon is not reader:
            encoder.set_lexicon(reader)
        hits[name] = zero_shot_hits(encoder, data[name])
        picks[name] = dense_picks(encoder, data[name])
        dense[name] = float((picks[name] == data[name].target).mean())
        if not name.startswith("heldout_words"):
            dense_errors[name] = pick_error_kinds(data[name], picks[name])
    encoder.set_lexicon(None)  # the presence and retrieval figures read the commands as written
    accuracy = {name: float(hits[name].mean()) for name in splits}
    retrieval = retrieval_r1(encoder, data["train_combos"], sampler)
    corrupted = generate_scenes(args.scenes, seed=args.seed, split="train", image_size=image_size, corrupted=True,
                                progress=True)
    valid_scores = score_frames(encoder, data["train_combos"].images, [str(c) for c in data["train_combos"].commands])
    invalid_scores = score_frames(encoder, corrupted.images, [str(c) for c in corrupted.commands])
    report = {
        "zero_shot_accuracy": accuracy,
        "dense_pick_accuracy": dense,
        "dense_pick_errors": dense_errors,
        "presence": {"auroc": auroc(valid_scores, invalid_scores)},
        "retrieval_r1": retrieval,
        "scenes": args.scenes,
        "checkpoint": checkpoint,
        "weights_sha256": encoder.weights_sha256,
        "seed": args.seed,
        "image_size": image_size,
        "objects_per_scene": int(data["train_combos"].valid.sum(axis=1).max()),
        "retrieval_candidates": args.scenes,
        "wall_time_s": round(time.time() - start, 1),
    }
    by_kind = {}
    for name in ("heldout_words", "heldout_words_lexicon"):
        if name not in splits:
            continue
        words = data[name]
        kinds = np.asarray(words.kinds)
        by_kind[name] = {kind: {"zero_shot": float(hits[name][kinds == kind].mean()),
                                "dense_pick": float((picks[name] == words.target)[kinds == kind].mean()),
                                "scenes": int((kinds == kind).sum())} for kind in sorted(set(kinds.tolist()))}
        report[f"{name}_by_kind"] = by_kind[name]
    labels = {"train_combos": "training combos", "heldout_combos": "held-out combos",
              "heldout_words": "held-out words", "heldout_words_lexicon": "held-out words, read by the lexicon"}
    rows = []
    for name in splits:
        rows.append({"metric": f"zero-shot object pick, {labels[name]}", "value": accuracy[name]})
        rows += [{"metric": f"  held-out {kind} words", "value": entry["zero_shot"]}
                 for kind, entry in by_kind.get(name, {}).items()]
    rows += [{"metric": f"dense region pick (no object pixels), {labels[name]}", "value": dense[name]}
             for name in splits]
    rows += [{"metric": f"  wrong pick, held-out combos: {kind.replace('_', ' ')}", "value": share}
             for kind, share in dense_errors["heldout_combos"].items()]
    rows += [
        {"metric": "presence AUROC, training combos vs corrupted commands", "value": report["presence"]["auroc"]},
        {"metric": f"retrieval R@1 image->text (of {args.scenes})", "value": retrieval["image_to_text"]},
        {"metric": f"retrieval R@1 text->image (of {args.scenes})", "value": retrieval["text_to_image"]},
    ]
    print(f"CLIP {checkpoint} (sha256 {encoder.weights_sha256[:12]}), {args.scenes} scenes per split, "
          f"seeds from {args.seed}")
    print(format_table(rows, ["metric", "value"]))
    write_json(args.json, report)
    return 0

