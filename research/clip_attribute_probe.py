"""What a CLIP's region embedding of each object says on its own, per colour-shape combo.

Usage: ``.venv/bin/python scripts/clip_attribute_probe.py CLIP_DIR [SCENES] [SPLIT]``

For every object of ``vla-ros eval-clip``'s scenes (seeds from 2,000,000, 64 px; default 400 scenes of the
``heldout_combos`` split) the region embedding at the object's pixel is classified, with no other object to
compare against:

- ``shape``: among the shape-only captions ("a cube", "a ball", "a cylinder");
- ``combo``: among "the <colour> <shape>" for every colour and shape of the instruction set;
- ``colour``: among the colour-only captions ("the red object", ...).

The policy's grounding compares the objects of one scene with each other. This probe shows what the
embedding carries alone: an unseen combination whose region is classified as the seen combination of the
same colour is found only by contrast with the objects beside it.
"""

import sys
from collections import defaultdict

import numpy as np
import torch

from vla_ros.envs.instructions import load_instructions
from vla_ros.grounding.data import generate_scenes
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.regions import region_embeddings


def main() -> None:
    """Render the scenes, classify each object's region, print one row per combo."""
    clip_dir = sys.argv[1]
    scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    split = sys.argv[3] if len(sys.argv) > 3 else "heldout_combos"
    torch.set_num_threads(1)
    encoder = ClipEncoder.from_pretrained(clip_dir)
    instructions = load_instructions()
    colours, shapes = list(instructions.colours), list(instructions.shapes)
    captions = {"shape": [f"a {s}" for s in shapes], "colour": [f"the {c} object" for c in colours],
                "combo": [f"the {c} {s}" for c in colours for s in shapes]}
    data = generate_scenes(scenes, seed=2_000_000, split=split, image_size=encoder.image_size)
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
    print(f"{clip_dir}, {split}, {scenes} scenes: share of objects whose region alone is classified right")
    print("  combo              objects  shape  colour  combo")
    for name, row in sorted(rows.items()):
        print(f"  {name:18} {len(row['shape']):7}  {np.mean(row['shape']):.2f}   {np.mean(row['colour']):.2f}   "
              f"{np.mean(row['combo']):.2f}")


if __name__ == "__main__":
    main()
