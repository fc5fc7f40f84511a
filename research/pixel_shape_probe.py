"""How well a linear classifier reads an object's shape from raw pixels across colours: RGB against HSV.

Usage: ``.venv/bin/python -m research.pixel_shape_probe [--train-scenes 1500] [--heldout-scenes 400]``

A ridge-regularised linear classifier of the shape (the instruction file's shapes) is fitted on 11 x 11 pixel
crops around the objects of training-split scenes (the seen colour-shape combos) and tested on the objects of
held-out-combo scenes (seeds from 5,000,000, 64 px), once per input representation, per held-out combo of the
instruction file. No CLIP is involved: this asks what a linear first layer could transfer to an unseen
combination. In RGB a shaded ball of an unseen colour lies along a direction no training ball had; in value
and saturation it does not.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import cv2
import numpy as np

from vla_ros.envs.instructions import load_instructions
from vla_ros.grounding.data import generate_scenes

RADIUS = 5  # crop half-width in pixels: objects are about 7 px across at 64 px
SEED = 5_000_000
IMAGE_SIZE = 64


def crops(split: str, scenes: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Flattened crops per representation, and the objects' colour and shape indices."""
    data = generate_scenes(scenes, seed=SEED, split=split, image_size=IMAGE_SIZE)
    features, colours, shapes = defaultdict(list), [], []
    pad = ((RADIUS, RADIUS), (RADIUS, RADIUS), (0, 0))
    for i in range(scenes):
        rgb = np.pad(data.images[i].astype(np.float32) / 255, pad)
        hsv = np.pad(cv2.cvtColor(data.images[i], cv2.COLOR_RGB2HSV).astype(np.float32) / [180, 255, 255], pad)
        for k in np.flatnonzero(data.valid[i]):
            u, v = np.round(data.pixels[i, k]).astype(int)
            window = np.s_[v:v + 2 * RADIUS + 1, u:u + 2 * RADIUS + 1]
            features["RGB"].append(rgb[window].ravel())
            features["grey (mean of RGB)"].append(rgb[window].mean(-1).ravel())
            features["value"].append(hsv[window][..., 2].ravel())
            features["value + saturation"].append(hsv[window][..., 1:].ravel())
            colours.append(data.colours[i, k])
            shapes.append(data.shapes[i, k])
    return {k: np.array(v) for k, v in features.items()}, np.array(colours), np.array(shapes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: without the program name; ``None``: ``sys.argv``)."""
    parser = argparse.ArgumentParser(prog="python -m research.pixel_shape_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--train-scenes", type=int, default=1500,
                        help="training-split scenes the classifier is fitted on (default: %(default)s)")
    parser.add_argument("--heldout-scenes", type=int, default=400,
                        help="held-out-combo scenes it is tested on (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Fit per representation, print the held-out combos' accuracy.

    Returns ``{representation: {"seen": accuracy on the fitted objects, "<colour> <shape>": accuracy on that
    held-out combo's objects (NaN where the scenes held none)}}``.
    """
    args = parse_args(argv)
    instructions = load_instructions()
    colour_names, shape_names = list(instructions.colours), list(instructions.shapes)
    held_out = [f"{c} {s}" for c, s in instructions.all_combos if (c, s) in instructions.heldout_combos]
    train, _, train_shapes = crops("train", args.train_scenes)
    heldout, heldout_colours, heldout_shapes = crops("heldout_combos", args.heldout_scenes)
    combo = np.array([f"{colour_names[c]} {shape_names[s]}" for c, s in zip(heldout_colours, heldout_shapes)])
    results = {}
    print(f"linear shape probe on pixel crops: fitted on {len(train_shapes)} objects of seen combos")
    print(f"  {'input':20} {'seen':>5}  " + "  ".join(f"{name:>14}" for name in held_out))
    for name, x in train.items():
        design = np.c_[x, np.ones(len(x))]
        targets = np.eye(len(shape_names))[train_shapes]
        weights = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ targets)
        seen = float(((design @ weights).argmax(1) == train_shapes).mean())
        predicted = (np.c_[heldout[name], np.ones(len(heldout[name]))] @ weights).argmax(1)
        accuracy = {c: float((predicted[combo == c] == heldout_shapes[combo == c]).mean())
                    if (combo == c).any() else float("nan") for c in held_out}
        results[name] = {"seen": seen, **accuracy}
        print(f"  {name:20} {seen:5.2f}  " + "  ".join(f"{a:14.2f}" for a in accuracy.values()))
    return results


if __name__ == "__main__":
    main()
