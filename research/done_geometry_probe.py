"""Is the done signal short of geometry or of perception? Done heads with privileged inputs added, per task.

Usage: ``python -m research.done_geometry_probe CHECKPOINT [--episodes 400] [--validation-episodes 200]
[--head-seeds 0 1] [--cache FILE.npz] [--json FILE]``

A skill-reader policy's done head on its ``moved`` inputs recalls 0.3-0.5 of reach and push successes at the
required precision, and does no better on its own training episodes: the inputs do not separate fulfilled states.
Reach is fulfilled when the fingertip is within 5 cm of the object, which the joint state (fingertip) and the first
frame's estimate (the object, unoccluded and not moving in a reach) determine in principle, through the arm's
kinematics and the camera's projection that a small head must learn from a few thousand observations. This probe
collects the policy's own episodes as ``vla-ros train-done`` does (:func:`research.done_history_probe.
collected_episodes`, with the simulator state of each observation) and fits the same per-task heads on:

- ``moved``: the policy's done inputs (the baseline);
- ``moved+fingertip``: plus the fingertip's image position and height, what a locator learned from the simulator's
  kinematics alone (no rendering) would add: geometry, no new perception;
- ``moved+fingertip+object``: plus the commanded object's true image position and height: perfect perception;
- ``geometry``: only the simulator's fingertip-to-object offset, the object's displacement along the commanded
  direction and the skill reader's reading (what the success flag is a function of).

Thresholds are tuned on the first half of each task's validation episodes and scored on the other half
(:func:`research.done_task_heads.score_task`).
"""

from __future__ import annotations

import argparse

import numpy as np

VARIANTS = ("moved", "moved+fingertip", "moved+fingertip+object", "geometry")


def variant_inputs(data: dict[str, np.ndarray], variant: str, project, skills_width: int = 5) -> np.ndarray:
    """The head inputs (N, D) of ``variant`` for collected rows with ``privileged`` state."""
    state = data["privileged"].astype(np.float64)
    fingertip, target, start, direction = state[:, 0:3], state[:, 3:6], state[:, 6:9], state[:, 9:12]
    if variant == "geometry":
        along = np.sum((target - start)[:, :2] * direction[:, :2], axis=1, keepdims=True)
        skills = data["features"][:, -skills_width:]
        return np.concatenate([fingertip - target, along, skills], axis=1).astype(np.float32)
    parts = [data["features"]]
    if variant in ("moved+fingertip", "moved+fingertip+object"):
        parts += [project(fingertip), fingertip[:, 2:3]]
    if variant == "moved+fingertip+object":
        parts += [project(target), target[:, 2:3]]
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    return np.concatenate(parts, axis=1).astype(np.float32)


def main(argv=None) -> dict:
    """Fit and score every variant; print one row per (variant, head seed, task); return the report."""
    import torch

    from research.done_history_probe import add_episode_arguments, collected_episodes
    from research.done_task_heads import score_task
    from vla_ros.policy.done_head import DONE_TASKS, done_probabilities, episodes_of_task, train_done_head
    from vla_ros.policy.fingertip_locator import camera_projection
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.done_geometry_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a skill-reader policy checkpoint with a reference prior")
    add_episode_arguments(parser)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--head-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    train, validation = collected_episodes(args.checkpoint, args.episodes, args.validation_episodes,
                                           args.num_envs, args.vec_env, args.cache, inputs="moved",
                                           privileged=True)
    if "privileged" not in train:
        raise ValueError(f"{args.cache}: cached without the simulator state; collect again (another --cache)")
    project = camera_projection()
    tasks = [i for i in range(len(DONE_TASKS)) if episodes_of_task(validation, i).any()]
    rows = []
    for variant in args.variants:
        train_x, val_x = (variant_inputs(d, variant, project) for d in (train, validation))
        for seed in args.head_seeds:
            for task in tasks:
                mask = episodes_of_task(train, task)
                head = train_done_head(train_x[mask], train["labels"][mask], seed=seed)
                scored = score_task(done_probabilities(head, val_x), validation, task, args.min_precision)
                fit = score_task(done_probabilities(head, train_x), train, task, args.min_precision)["tuning"]
                held = scored["held_out"]
                rows.append({"variant": variant, "head_seed": seed, "task": DONE_TASKS[task],
                             "inputs": train_x.shape[1],
                             "train_precision": fit["precision"], "train_recall": fit["recall"],
                             "threshold": round(scored["threshold"], 4), "held_out_precision": held["precision"],
                             "held_out_recall": held["recall"], "held_out_stopped": held["stopped"],
                             "held_out_reached_success": held["reached_success"]})
    print(format_table(rows, list(rows[0])))
    report = {"checkpoint": str(args.checkpoint), "episodes": args.episodes,
              "validation_episodes": args.validation_episodes, "min_precision": args.min_precision, "rows": rows}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
