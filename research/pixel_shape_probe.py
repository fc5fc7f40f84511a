"""How well a linear classifier reads an object's shape from raw pixels across colours: RGB against HSV.

Usage: ``.venv/bin/python scripts/pixel_shape_probe.py [TRAIN_SCENES] [HELDOUT_SCENES]``

A ridge-regularised linear classifier of the shape (cube, ball, cylinder) is fitted on 11 x 11 pixel crops
around the objects of training-split scenes (the 14 seen colour-shape combos) and tested on the objects of
held-out-combo scenes (seeds from 5,000,000, 64 px), once per input representation. No CLIP is involved:
this asks what a linear first layer could transfer to an unseen combination. In RGB a shaded ball of an
unseen colour lies along a direction no training ball had; in value and saturation it does not.
"""

import sys
from collections import defaultdict

import cv2
import numpy as np

from vla_ros.envs.instructions import load_instructions
from vla_ros.grounding.data import generate_scenes

RADIUS = 5  # crop half-width in pixels: objects are about 7 px across at 64 px
HELD_OUT = ("red ball", "green cylinder", "blue cube", "yellow ball")


def crops(split: str, scenes: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Flattened crops per representation, and the objects' colour and shape indices."""
    data = generate_scenes(scenes, seed=5_000_000, split=split, image_size=64)
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


def main() -> None:
    """Fit per representation, print the held-out combos' accuracy."""
    train_scenes = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    heldout_scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    instructions = load_instructions()
    colour_names, shape_names = list(instructions.colours), list(instructions.shapes)
    train, _, train_shapes = crops("train", train_scenes)
    heldout, heldout_colours, heldout_shapes = crops("heldout_combos", heldout_scenes)
    print(f"linear shape probe on pixel crops: fitted on {len(train_shapes)} objects of seen combos")
    print(f"  {'input':20} {'seen':>5}  " + "  ".join(f"{name:>14}" for name in HELD_OUT))
    for name, x in train.items():
        design = np.c_[x, np.ones(len(x))]
        weights = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ np.eye(3)[train_shapes])
        seen = ((design @ weights).argmax(1) == train_shapes).mean()
        predicted = (np.c_[heldout[name], np.ones(len(heldout[name]))] @ weights).argmax(1)
        combo = np.array([f"{colour_names[c]} {shape_names[s]}" for c, s in zip(heldout_colours, heldout_shapes)])
        accuracy = [(predicted[combo == c] == heldout_shapes[combo == c]).mean() for c in HELD_OUT]
        print(f"  {name:20} {seen:5.2f}  " + "  ".join(f"{a:14.2f}" for a in accuracy))


if __name__ == "__main__":
    main()
