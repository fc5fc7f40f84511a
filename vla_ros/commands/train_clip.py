r"""``vla-ros train-clip``: train the sim-domain CLIP, or adapt a local pretrained one with LoRA.

From scratch (the shipped model)::

    vla-ros train-clip --out runs/clip --steps 3000

Adapting a pretrained open_clip model whose weights are on disk (nothing is downloaded)::

    vla-ros train-clip --out runs/clip-lora --init-from ViT-B-32 \
        --init-pretrained ~/weights/vit_b_32.safetensors \
        --adapter lora --batch-size 32

Resumes from ``OUT/checkpoint`` with ``--resume``; the trained model lands in ``OUT/model`` (an open_clip
``local-dir:`` folder), per-evaluation metrics in ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from vla_ros.reporting import add_json_argument, write_json

_FLAGS = {  # config field -> help override where the dataclass docstring is not enough
    "out": "run folder (data cache, checkpoints, metrics, exported model in OUT/model)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainClipConfig` field (``--batch-size`` for ``batch_size``) + --resume."""
    from vla_ros.grounding.training import TrainClipConfig

    defaults = TrainClipConfig()
    for f in dataclasses.fields(TrainClipConfig):
        if f.name == "command":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = _FLAGS.get(f.name, f.name.replace("_", " ")) + f" (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif f.name == "adapter":
            parser.add_argument(flag, choices=("none", "lora"), default=default, help=help_text)
        else:
            kind = type(default) if default is not None else str
            parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint/train_state.pt")
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and export; print the final metrics."""
    from vla_ros.grounding.training import ClipTrainer, TrainClipConfig, command_line

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainClipConfig)
              if f.name != "command"}
    config = TrainClipConfig(**values, command=command_line())
    trainer = ClipTrainer(config, resume=args.resume)
    metrics = trainer.train()
    print(json.dumps(metrics, indent=2))
    print(f"model written to {trainer.out / 'model'}")
    write_json(args.json, metrics)
    return 0
