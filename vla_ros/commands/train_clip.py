r"""``vla-ros train-clip``: train the sim-domain CLIP, or adapt a local pretrained one with LoRA.

The shipped CLIP, from its recipe (flags given as well override the recipe)::

    vla-ros train-clip --config models/clip/recipe.yaml --out runs/clip

Adapting a pretrained open_clip model whose weights are on disk (nothing is downloaded)::

    vla-ros train-clip --out runs/clip-lora --init-from ViT-B-32 \
        --init-pretrained ~/weights/vit_b_32.safetensors \
        --adapter lora --batch-size 32

Resumes from ``OUT/checkpoint`` with ``--resume``; the trained model lands in ``OUT/model`` (an open_clip
``local-dir:`` folder), per-evaluation metrics in ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json

from vla_ros.reporting import add_json_argument, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainClipConfig` field (``--batch-size`` for ``batch_size``), --config, --resume."""
    from vla_ros.commands.dataclass_args import add_dataclass_arguments
    from vla_ros.grounding.training import TrainClipConfig

    add_dataclass_arguments(parser, TrainClipConfig, skip=("command",),
                            choices={"adapter": ("none", "lora"), "colour_space": ("rgb", "vsh"),
                                     "text_pooling": ("mean", "projected_tokens")})
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/train_state.pt")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and export; print the final metrics."""
    from vla_ros.commands.dataclass_args import dataclass_from_args
    from vla_ros.grounding.training import ClipTrainer, TrainClipConfig, command_line

    try:
        config = dataclass_from_args(TrainClipConfig, args, skip=("command",), command=command_line())
    except ValueError as error:
        raise SystemExit(f"vla-ros train-clip: {error}") from None
    trainer = ClipTrainer(config, resume=args.resume)
    metrics = trainer.train()
    print(json.dumps(metrics, indent=2))
    print(f"model written to {trainer.out / 'model'}")
    write_json(args.json, metrics)
    return 0
