"""How far off is a policy's estimate of the pushed object as the fingertip nears it, with a reference prior or not.

Usage: ``python -m research.push_estimate_errors CHECKPOINT [--episodes 40] [--prior-weights 0 0.5 1 2]
[--seed 7500000] [--json FILE]``

The scripted expert pushes (so every run sees the same states); at each step the checkpoint's ``region_map``
fusion (reference frame required) estimates the commanded object's image position from the rendered frame, with
the episode's first-frame map added at each ``--prior-weights`` weight (``reference_prior``'s rule; 0: the
current frame alone). Reported per band of fingertip-object distance (horizontal): frames, the median error and
the share of frames off by more than 0.2 image half-widths (a jump to another object or to the arm), against the
object's true projected position.
"""

from __future__ import annotations

import argparse

import numpy as np

BANDS = ((0.0, 0.05), (0.05, 0.10), (0.10, np.inf))  # m between fingertip and object, horizontally
JUMP = 0.2  # image half-widths


def summarise(distances: np.ndarray, errors: np.ndarray, weights) -> list[dict]:
    """One row per (band, prior weight): frames, median error, share of jumps."""
    rows = []
    for low, high in BANDS:
        keep = (distances >= low) & (distances < high)
        for j, weight in enumerate(weights):
            err = errors[keep, j]
            rows.append({"fingertip_to_object_m": f"{low:.2f}-{high:.2f}" if np.isfinite(high) else f">={low:.2f}",
                         "prior_weight": float(weight), "frames": int(keep.sum()),
                         "median_error": float(np.median(err)) if len(err) else float("nan"),
                         "share_off_by_0.2": float(np.mean(err > JUMP)) if len(err) else float("nan")})
    return rows


def main(argv=None) -> dict:
    """Run the expert's push episodes; print the table and return the report."""
    import torch

    from research.push_memory_probe import PushScenes
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_estimate_errors",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a reference-frame region_map policy checkpoint")
    parser.add_argument("--episodes", type=int, default=40, help="expert push episodes (default 40)")
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    parser.add_argument("--seed", type=int, default=7_500_000, help="first scene seed (default 7,500,000)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scenes = PushScenes(estimates_from=args.checkpoint)
    fusion = scenes.fusion
    distances, errors = [], []
    for seed in range(args.seed, args.seed + args.episodes):
        _, info = scenes.reset(seed)
        done = False
        while not done:
            true = scenes._target_xy()
            with torch.no_grad():  # the frame and command the scenes encoded for their own estimate
                patches, text = scenes.last_patches, scenes.last_text
                current, prior = fusion.logits(patches, text), fusion.logits(scenes._reference_patches, text)
                estimates = [fusion._readout(current + w * prior)[2][0].numpy() for w in args.prior_weights]
            privileged = info["privileged"]
            distances.append(float(np.linalg.norm(privileged[0:2] - privileged[3:5])))
            errors.append([float(np.linalg.norm(e - true)) for e in estimates])
            _, info, done = scenes.step(scenes.expert.act(info))
    rows = summarise(np.asarray(distances), np.asarray(errors), args.prior_weights)
    print(format_table(rows, list(rows[0])))
    report = {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed, "rows": rows}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
