"""Where a CLIP's region map puts the commanded object, per commanded colour-shape combo.

Usage: ``.venv/bin/python -m research.clip_map_localisation CLIP_DIR [--scenes 300] [--temperature 4.4]
[--patch-stitch 1]``

This is what the ``region_map`` fusion reads. For each rendered scene (``vla-ros eval-clip``'s scenes: seeds
from 2,000,000, 3 objects, 64 px) it standardises the command's region-text similarity over the patch grid,
takes the softmax-weighted mean patch centre at the given temperature (default 4.4, what the shipped policy
learned) and the peak estimate (window 1.5 CLIP patches, as the shipped policy), and prints per split and per
commanded combo (colour index-shape index, in the instruction file's order):

- ``pick``: the mean (the peak) lands nearest the commanded object;
- ``error``: the median distance from the mean (the peak) to the commanded object, in half image widths (the
  reach task succeeds within about 0.16, 5 cm on the table);
- ``same-colour margin``: the mean similarity of the same-coloured other objects minus the target's, with the
  objects' pixels given (``vla-ros eval-clip``'s zero-shot regions); near 0 means they nearly tie.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

from vla_ros.grounding.data import generate_scenes
from vla_ros.grounding.encoder import ClipEncoder
from vla_ros.grounding.fusion import build_fusion
from vla_ros.grounding.zero_shot import object_pixels_to_model, region_similarities

SEED = 2_000_000  # vla-ros eval-clip's scenes
SPLITS = ("train", "heldout_combos")
PEAK_WINDOW = 1.5  # CLIP patches, as the shipped policy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: without the program name; ``None``: ``sys.argv``)."""
    parser = argparse.ArgumentParser(prog="python -m research.clip_map_localisation",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("clip_dir", help="CLIP checkpoint folder (e.g. models/policy/clip)")
    parser.add_argument("--scenes", type=int, default=300, help="scenes per split (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=4.4,
                        help="the map's softmax temperature (default: %(default)s, the shipped policy's)")
    parser.add_argument("--patch-stitch", type=int, default=1,
                        help="shift-and-stitch factor of the patch tokens (default: %(default)s, none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Render the scenes, score the maps, print one table per split.

    Returns ``{split: {combo: {"scenes", "pick", "error", "peak_pick", "peak_error", "margin"}}}`` with
    ``combo`` "colour index-shape index" or "all"; ``margin`` is ``None`` where no other object shared the
    target's colour.
    """
    args = parse_args(argv)
    scenes, temperature, stitch = args.scenes, args.temperature, args.patch_stitch
    torch.set_num_threads(1)
    plain = ClipEncoder.from_pretrained(args.clip_dir)  # the zero-shot regions are scored on the CLIP's own grid
    encoder = plain if stitch == 1 else ClipEncoder.from_pretrained(args.clip_dir, patch_stitch=stitch)
    # the fusion's own map (its MLP is not used): what a region_map policy reads
    fusion = build_fusion("region_map", encoder.embed_dim, encoder.num_patches, grid_size=encoder.grid_size,
                          peak_window=PEAK_WINDOW, patch_stitch=stitch)
    with torch.no_grad():
        fusion.log_temperature.fill_(np.log(temperature))
    results = {}
    for split in SPLITS:
        data = generate_scenes(scenes, seed=SEED, split=split, image_size=encoder.image_size)
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
        rows["all"] = {k: [x for combo in list(rows.values()) for x in combo[k]] for k in next(iter(rows.values()))}
        results[split] = {
            combo: {"scenes": len(row["pick"]), "pick": float(np.mean(row["pick"])),
                    "error": float(np.median(row["error"])), "peak_pick": float(np.mean(row["peak_pick"])),
                    "peak_error": float(np.median(row["peak_error"])),
                    "margin": float(np.mean(row["margin"])) if row["margin"] else None}
            for combo, row in sorted(rows.items())}
        print(f"{args.clip_dir} {split}, {scenes} scenes, temperature {temperature}, patch_stitch {stitch}")
        print("  combo  scenes  pick   error  peak pick  peak error  same-colour margin")
        for combo, row in results[split].items():
            margin = f"{row['margin']:+.3f}" if row["margin"] is not None else "-"
            print(f"  {combo:5}  {row['scenes']:6}  {row['pick']:.3f}  {row['error']:.3f}  "
                  f"{row['peak_pick']:9.3f}  {row['peak_error']:10.3f}  {margin}")
    return results


if __name__ == "__main__":
    main()
