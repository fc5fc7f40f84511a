"""What a CLIP's region embedding of each object says on its own, per colour-shape combo.

Usage: ``.venv/bin/python -m research.clip_attribute_probe CLIP_DIR [--scenes 400] [--split heldout_combos]``

For every object of ``vla-ros eval-clip``'s scenes (seeds from 2,000,000, 64 px; default 400 scenes of the
``heldout_combos`` split) the region embedding at the object's pixel is classified, with no other object to
compare against:

- ``shape``: among the shape-only captions ("a <shape>" for every shape of the instruction set);
- ``combo``: among "the <colour> <shape>" for every colour and shape of the instruction set;
- ``colour``: among the colour-only captions ("the <colour> object").

The policy's grounding compares the objects of one scene with each other. This probe shows what the
embedding carries alone: an unseen combination whose region is classified as the seen combination of the
same colour is found only by contrast with the objects beside it.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from vla_ros.envs.instructions import SPLITS, load_instructions
from vla_ros.grounding.data import generate_scenes
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.regions import region_embeddings

SEED = 2_000_000  # vla-ros eval-clip's scenes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: without the program name; ``None``: ``sys.argv``)."""
    parser = argparse.ArgumentParser(prog="python -m research.clip_attribute_probe", description=__doc__.split("\n")[0])
    parser.add_argument("clip_dir", help="CLIP checkpoint folder (e.g. models/policy/clip)")
    parser.add_argument("--scenes", type=int, default=400, help="scenes to render (default: %(default)s)")
    parser.add_argument("--split", default="heldout_combos", choices=SPLITS,
                        help="the env split the scenes come from (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Render the scenes, classify each object's region, print one row per combo.

    Returns ``{"<colour> <shape>": {"objects", "shape", "colour", "combo"}}``: the object count and the
    share of its objects whose region alone is classified right.
    """
    args = parse_args(argv)
    torch.set_num_threads(1)
    encoder = ClipEncoder.from_pretrained(args.clip_dir)
    instructions = load_instructions()
    colours, shapes = list(instructions.colours), list(instructions.shapes)
    captions = {"shape": [f"a {s}" for s in shapes], "colour": [f"the {c} object" for c in colours],
                "combo": [f"the {c} {s}" for c, s in instructions.all_combos]}
    data = generate_scenes(args.scenes, seed=SEED, split=args.split, image_size=encoder.image_size)
    geometry = encoder.frame_geometry(*data.images.shape[1:3])
    pixels = (torch.from_numpy(np.asarray(data.pixels, np.float32)) * torch.tensor([geometry.scale_x, geometry.scale_y])
              + torch.tensor([geometry.offset_x, geometry.offset_y]))
    with torch.no_grad():
        regions = region_embeddings(encoder.encode_images(data.images).patches, pixels, encoder.grid_size,
                                    encoder.image_size)  # (B, K, D), unit norm
        scores = {name: torch.einsum("bkd,td->bkt", regions, encoder.encode_text(texts)).numpy()
                  for name, texts in captions.items()}
    rows = defaultdict(lambda: defaultdict(list))
    for i, k in zip(*np.nonzero(data.valid)):
        colour, shape = int(data.colours[i, k]), int(data.shapes[i, k])
        row = rows[f"{colours[colour]} {shapes[shape]}"]
        row["shape"].append(scores["shape"][i, k].argmax() == shape)
        row["colour"].append(scores["colour"][i, k].argmax() == colour)
        row["combo"].append(scores["combo"][i, k].argmax() == colour * len(shapes) + shape)
    results = {name: {"objects": len(row["shape"]), **{key: float(np.mean(row[key])) for key in captions}}
               for name, row in sorted(rows.items())}
    print(f"{args.clip_dir}, {args.split}, {args.scenes} scenes: "
          "share of objects whose region alone is classified right")
    print("  combo              objects  shape  colour  combo")
    for name, row in results.items():
        print(f"  {name:18} {row['objects']:7}  {row['shape']:.2f}   {row['colour']:.2f}   {row['combo']:.2f}")
    return results


if __name__ == "__main__":
    main()
