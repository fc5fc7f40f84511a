"""Where a CLIP's region map puts the commanded object, per commanded colour-shape combo.

Usage: ``.venv/bin/python scripts/clip_map_localisation.py CLIP_DIR [SCENES] [TEMPERATURE] [PATCH_STITCH]``

This is what the ``region_map`` fusion reads. For each rendered scene (``vla-ros eval-clip``'s scenes: seeds
from 2,000,000, 3 objects, 64 px) it standardises the command's region-text similarity over the patch grid,
takes the softmax-weighted mean patch centre at the given temperature (default 4.4, what the shipped policy
learned) and the peak estimate (window 1.5 CLIP patches, as the shipped policy), and prints per split and per
commanded combo (colour index-shape index):

- ``pick``: the mean (the peak) lands nearest the commanded object;
- ``error``: the median distance from the mean (the peak) to the commanded object, in half image widths (the
  reach task succeeds within about 0.16, 5 cm on the table);
- ``same-colour margin``: the mean similarity of the same-coloured other objects minus the target's, with the
  objects' pixels given (``vla-ros eval-clip``'s zero-shot regions); near 0 means they nearly tie.
"""

import sys
from collections import defaultdict

import numpy as np
import torch

from vla_ros.grounding.data import generate_scenes
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.fusion import build_fusion
from vla_ros.grounding.zero_shot import object_pixels_to_model, region_similarities


def main() -> None:
    """Render the scenes, score the maps, print one table per split."""
    clip_dir = sys.argv[1]
    scenes = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    temperature = float(sys.argv[3]) if len(sys.argv) > 3 else 4.4
    stitch = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    torch.set_num_threads(1)
    plain = ClipEncoder.from_pretrained(clip_dir)  # the zero-shot regions are scored on the CLIP's own grid
    encoder = plain if stitch == 1 else ClipEncoder.from_pretrained(clip_dir, patch_stitch=stitch)
    # the fusion's own map (its MLP is not used): what a region_map policy reads
    fusion = build_fusion("region_map", encoder.embed_dim, encoder.num_patches, grid_size=encoder.grid_size,
                          peak_window=1.5, patch_stitch=stitch)
    with torch.no_grad():
        fusion.log_temperature.fill_(np.log(temperature))
    for split in ("train", "heldout_combos"):
        data = generate_scenes(scenes, seed=2_000_000, split=split, image_size=encoder.image_size)
        texts = encoder.encode_text([str(c) for c in data.commands])
        with torch.no_grad():
            _, weights, peak = fusion._readout(fusion.logits(encoder.encode_images(data.images).patches, texts))
            estimate, peak = (weights @ fusion.coordinates).numpy(), peak.numpy()
        zero_shot = region_similarities(plain, data.images, data.pixels, texts).numpy()
        rows = defaultdict(lambda: {"pick": [], "error": [], "peak_pick": [], "peak_error": [], "margin": []})
        for i in range(scenes):
            objects = object_pixels_to_model(encoder, data.images[i].shape, data.pixels[i]).numpy()
            objects = objects / encoder.image_size * 2 - 1
            distance = np.where(data.valid[i], np.linalg.norm(objects - estimate[i], axis=1), np.inf)
            target = int(data.target[i])
            row = rows[f"{data.colours[i, target]}-{data.shapes[i, target]}"]
            row["pick"].append(int(distance.argmin()) == target)
            row["error"].append(float(distance[target]))
            peak_distance = np.where(data.valid[i], np.linalg.norm(objects - peak[i], axis=1), np.inf)
            row["peak_pick"].append(int(peak_distance.argmin()) == target)
            row["peak_error"].append(float(peak_distance[target]))
            same_colour = [j for j in range(len(objects)) if j != target and data.valid[i, j]
                           and data.colours[i, j] == data.colours[i, target]]
            row["margin"] += [float(zero_shot[i, j] - zero_shot[i, target]) for j in same_colour]
        print(f"{clip_dir} {split}, {scenes} scenes, temperature {temperature}, patch_stitch {stitch}")
        print("  combo  scenes  pick   error  peak pick  peak error  same-colour margin")
        rows["all"] = {k: [x for combo in list(rows.values()) for x in combo[k]] for k in next(iter(rows.values()))}
        for combo, row in sorted(rows.items()):
            margin = f"{np.mean(row['margin']):+.3f}" if row["margin"] else "-"
            print(f"  {combo:5}  {len(row['pick']):6}  {np.mean(row['pick']):.3f}  {np.median(row['error']):.3f}  "
                  f"{np.mean(row['peak_pick']):9.3f}  {np.median(row['peak_error']):10.3f}  {margin}")


if __name__ == "__main__":
    main()
