"""How far off is a policy's estimate of the pushed object as the fingertip nears it, with a reference prior or not.

Usage: ``python -m research.push_estimate_errors CHECKPOINT [--episodes 40] [--prior-weights 0 0.5 1 2]
[--track SIGMA:WEIGHT[:EVERY] ...] [--clip DIR] [--seed 7500000] [--json FILE]``

The scripted expert pushes (so every run sees the same states); at each step the checkpoint's ``region_map``
fusion (reference frame required) estimates the commanded object's image position from the rendered frame, with
the episode's first-frame map added at each ``--prior-weights`` weight (``reference_prior``'s rule; 0: the
current frame alone). Reported per band of fingertip-object distance (horizontal): frames, the median error and
the share of frames off by more than 0.2 image half-widths (a jump to another object or to the arm), against the
object's true projected position. ``--clip DIR`` reads another CLIP's map (an exported ``train-clip`` model folder)
through the checkpoint's fusion, so two CLIPs compare on the same states before a policy is trained on either.

``--track SIGMA:WEIGHT[:EVERY]`` adds trackers: the current map plus ``WEIGHT`` times the log of a Gaussian of
``SIGMA`` patches centred on the tracker's own previous estimate (the first frame starts it), updated every
``EVERY`` frames (1, or a chunked policy's 4: it sees one frame in four), each also with the first frame's map at
the largest ``--prior-weights`` weight (``SIGMA:WEIGHT:EVERY:prior``).
"""

from __future__ import annotations

import argparse

import numpy as np

from vla_ros.grounding.object_locator import JUMP  # image half-widths: an estimate that has jumped

BANDS = ((0.0, 0.05), (0.05, 0.10), (0.10, np.inf))  # m between fingertip and object, horizontally


def summarise(distances: np.ndarray, errors: np.ndarray, weights) -> list[dict]:
    """One row per (band, setting: a prior weight or a tracker's name): frames, median error, share of jumps."""
    rows = []
    for low, high in BANDS:
        keep = (distances >= low) & (distances < high)
        for j, weight in enumerate(weights):
            err = errors[keep, j]
            band = f"{low:.2f}-{high:.2f}" if np.isfinite(high) else f">={low:.2f}"
            rows.append({"fingertip_to_object_m": band,
                         "prior_weight": weight if isinstance(weight, str) else float(weight),
                         "frames": int(keep.sum()),
                         "median_error": float(np.median(err)) if len(err) else float("nan"),
                         "share_off_by_0.2": float(np.mean(err > JUMP)) if len(err) else float("nan")})
    return rows


def parse_tracker(text: str) -> dict:
    """``SIGMA:WEIGHT[:EVERY[:prior]]`` -> tracker settings."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4 or (len(parts) == 4 and parts[3] != "prior"):
        raise argparse.ArgumentTypeError(f"--track {text!r}: expected SIGMA:WEIGHT[:EVERY[:prior]]")
    return {"sigma": float(parts[0]), "weight": float(parts[1]), "every": int(parts[2]) if len(parts) > 2 else 1,
            "prior": len(parts) == 4, "name": f"track {text}"}


def parse_previous(text: str) -> tuple[float, int]:
    """``WEIGHT:EVERY`` -> (weight, every)."""
    weight, _, every = text.partition(":")
    return float(weight), int(every or 1)


def track_logits(fusion, logits, previous_xy, sigma_patches: float, weight: float):
    """``logits`` plus ``weight`` times the log of a Gaussian of ``sigma_patches`` around ``previous_xy`` (1, 2)."""
    import math

    grid = math.isqrt(fusion.coordinates.shape[0])
    sigma = sigma_patches * 2.0 / grid  # patches -> image half-widths
    squared = (fusion.coordinates - previous_xy).square().sum(-1)
    return logits - weight * squared / (2 * sigma * sigma)


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
    parser.add_argument("--track", type=parse_tracker, nargs="*", default=[],
                        help="trackers SIGMA:WEIGHT[:EVERY[:prior]] (module doc)")
    parser.add_argument("--previous", type=parse_previous, nargs="*", default=[],
                        help="WEIGHT:EVERY: the map of the last frame a policy deciding every EVERY frames saw, as "
                             "a prior at WEIGHT (the first frame's until then)")
    parser.add_argument("--clip", help="read this CLIP model folder's map instead of the checkpoint's CLIP")
    parser.add_argument("--seed", type=int, default=7_500_000, help="first scene seed (default 7,500,000)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    scenes = PushScenes(estimates_from=args.checkpoint, clip=args.clip)
    fusion = scenes.fusion
    distances, errors = [], []
    top_prior = max(args.prior_weights)
    for seed in range(args.seed, args.seed + args.episodes):
        _, info = scenes.reset(seed)
        done, step, tracked = False, 0, [None] * len(args.track)
        previous = {}  # every -> the patches of the last frame a policy deciding every that many frames saw
        while not done:
            true = scenes._target_xy()
            with torch.no_grad():  # the frame and command the scenes encoded for their own estimate
                patches, text = scenes.last_patches, scenes.last_text
                current, prior = fusion.logits(patches, text), fusion.logits(scenes._reference_patches, text)
                estimates = [fusion._readout(current + w * prior)[2][0].numpy() for w in args.prior_weights]
                for k, tracker in enumerate(args.track):
                    if tracked[k] is None:
                        tracked[k] = fusion._readout(current)[2]
                    elif step % tracker["every"] == 0:
                        logits = current + top_prior * prior if tracker["prior"] else current
                        tracked[k] = fusion._readout(track_logits(fusion, logits, tracked[k], tracker["sigma"],
                                                                  tracker["weight"]))[2]
                    estimates.append(tracked[k][0].numpy())
                for weight, every in args.previous:
                    before = previous.get(every, scenes._reference_patches)
                    estimates.append(fusion._readout(current + weight * fusion.logits(before, text))[2][0].numpy())
                for every in {every for _, every in args.previous}:
                    if step % every == 0:
                        previous[every] = patches
            step += 1
            privileged = info["privileged"]
            distances.append(float(np.linalg.norm(privileged[0:2] - privileged[3:5])))
            errors.append([float(np.linalg.norm(e - true)) for e in estimates])
            _, info, done, _ = scenes.step(scenes.expert.act(info))
    settings = (list(args.prior_weights) + [tracker["name"] for tracker in args.track]
                + [f"previous {weight:g}:{every}" for weight, every in args.previous])
    rows = summarise(np.asarray(distances), np.asarray(errors), settings)
    print(format_table(rows, list(rows[0])))
    report = {"checkpoint": str(args.checkpoint), "clip": args.clip, "episodes": args.episodes, "seed": args.seed,
              "rows": rows}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
