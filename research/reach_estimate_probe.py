"""How far off a reach policy's object estimates are on training words and on new words, and where its misses end.

Usage: ``python -m research.reach_estimate_probe CHECKPOINT [--episodes 150] [--seed 10000]
[--splits train validation_words] [--json FILE]``

Reach on held-out combinations stays at 94.5-97.0% in every mixed run (bar 99.5), with misses that end near the
object rather than at another one (docs/EXPERIMENT_LOG.md, twenty-first session). Two readings of that: the
policy's estimate of the object is off on commands unlike its training ones (the object locator is a learned
map that reads each patch's CLIP token times the command, fitted on training commands only), or the estimate is
right and the arm does not come down. This probe separates them on validation splits only (the word split kept
for choosing settings; no evaluation split is run): the policy reaches (episodes run to the time limit, as
``vla-ros train-done`` collects them), and on every observation the locator's estimate (what the policy reads)
and the first frame's CLIP-map estimate are projected onto the objects' plane and compared with the true object.

Reported per split: median error and the share off by more than 3 cm, at the first frame, with the fingertip
within 6 cm of the object (the arm over it), and overall; and for episodes that never reach the object, the last
fingertip-object distance in the table plane, the height above the object's centre and how far the object was
moved from its start (knocked away); and how many episodes reach the object per shape of target (read off its
starting height).
"""

from __future__ import annotations

import argparse

import numpy as np

SHAPE_TOLERANCE = 0.002  # m: an object resting on the table has its centre at its half height (cube 2.7, ball 3.0,
# cylinder 3.5 cm), so the target's starting height names its shape
NEAR = 0.06  # m, fingertip-object distance in the table plane where the arm is over the object
OFF = 0.03  # m, an estimate this far off the object would lead the arm beside it


def shape_at_height(height: float) -> str:
    """The object shape whose centre rests at ``height`` above the table ("?" when none is within tolerance)."""
    from vla_ros.envs.scene import OBJECT_HALF_SIZE, TABLE_TOP_Z

    best = min(OBJECT_HALF_SIZE, key=lambda shape: abs(OBJECT_HALF_SIZE[shape][1] - (height - TABLE_TOP_Z)))
    return best if abs(OBJECT_HALF_SIZE[best][1] - (height - TABLE_TOP_Z)) <= SHAPE_TOLERANCE else "?"


def estimate_errors(data: dict[str, np.ndarray], project) -> dict:
    """Errors (m) of the locator's and the first frame's estimates on collected reach rows (``privileged`` kept)."""
    from research.done_rule_probe import plane_homography, to_plane
    from vla_ros.policy.done_head import estimate_columns

    state = data["privileged"].astype(np.float64)
    fingertip, target = state[:, 0:3], state[:, 3:6]
    homography = plane_homography(project, float(np.median(state[:, 8])))
    first_columns, current_columns = estimate_columns(data["features"].shape[1], "estimates", proprio=0)
    located = to_plane(homography, data["features"][:, current_columns].astype(np.float64))
    first = to_plane(homography, data["features"][:, first_columns].astype(np.float64))
    located_error = np.linalg.norm(located - target[:, :2], axis=1)
    first_error = np.linalg.norm(first - target[:, :2], axis=1)
    apart = np.linalg.norm(fingertip[:, :2] - target[:, :2], axis=1)
    rows = {}
    for name, mask in (("first_frame", data["step"] == 0), ("arm_over_object", apart < NEAR),
                       ("all", np.ones(len(apart), bool))):
        rows[name] = {"observations": int(mask.sum()),
                      "locator_median_m": float(np.median(located_error[mask])),
                      "locator_off_share": float(np.mean(located_error[mask] > OFF)),
                      "first_frame_map_median_m": float(np.median(first_error[mask])),
                      "first_frame_map_off_share": float(np.mean(first_error[mask] > OFF))}
    misses, by_shape = [], {}
    episodes = np.unique(data["episode"])
    for episode in episodes:
        index = np.flatnonzero(data["episode"] == episode)
        index = index[np.argsort(data["step"][index])]
        shape = shape_at_height(float(state[index[0], 8]))  # the target's start
        tally = by_shape.setdefault(shape, {"episodes": 0, "reached": 0})
        tally["episodes"] += 1
        if data["labels"][index].any():
            tally["reached"] += 1
            continue
        last = index[-1]
        misses.append({"episode": int(episode), "shape": shape, "apart_m": round(float(apart[last]), 4),
                       "height_above_object_m": round(float(fingertip[last, 2] - target[last, 2]), 4),
                       "object_moved_m": round(float(np.linalg.norm(target[last, :2] - state[last, 6:8])), 4),
                       "locator_error_m": round(float(located_error[last]), 4),
                       "first_frame_map_error_m": round(float(first_error[index[0]]), 4)})
    return {"estimates": rows, "episodes": len(episodes), "by_shape": by_shape,
            "misses": misses}


def main(argv=None) -> dict:
    """Run the probe (module doc); returns the report."""
    import torch

    from vla_ros.policy.done_head import collect_done_data
    from vla_ros.policy.fingertip_locator import camera_projection
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.reach_estimate_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a mixed or reach policy checkpoint with an object locator")
    parser.add_argument("--episodes", type=int, default=150, help="reach episodes per split (default 150)")
    parser.add_argument("--seed", type=int, default=10_000, help="first scene seed (default 10,000: validation)")
    parser.add_argument("--splits", nargs="+", default=["train", "validation_words"],
                        choices=["train", "validation_words"], help="validation splits only")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    report = {"checkpoint": str(args.checkpoint), "seed": args.seed, "splits": {}}
    table = []
    for split in args.splits:
        data = collect_done_data(policy.network, policy.encoder, policy.normalizer, "reach", args.episodes,
                                 args.seed, num_envs=args.num_envs, inputs="estimates", privileged=True,
                                 split=split, progress=True)
        result = estimate_errors(data, camera_projection())
        report["splits"][split] = result
        for where, row in result["estimates"].items():
            table.append({"split": split, "where": where, **{k: round(v, 4) for k, v in row.items()}})
        print(f"{split}: {len(result['misses'])} of {result['episodes']} episodes never reached the object; "
              f"reached by shape {result['by_shape']}", flush=True)
        for miss in result["misses"]:
            print(f"  {miss}")
    print(format_table(table, list(table[0])))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
