"""Done heads compared: one head for every task (as ``vla-ros train-done`` fits) against one head per task.

Usage: ``python -m research.done_task_heads CHECKPOINT [--inputs moved] [--episodes 400]
[--validation-episodes 200] [--head-seeds 0 1 2] [--cache FILE.npz] [--json FILE]``

Collects the policy's own episodes as ``vla-ros train-done`` does (run to the time limit, each observation labelled
with the simulator's success flag; training seeds from ``DONE_SEED``, validation from ``DONE_VALIDATION_SEED``),
then fits, for each head seed, the same head (:func:`vla_ros.policy.done_head.train_done_head`) either on every
task's observations (``joint``, the shipped way) or on one task's alone (``per_task``). Each task's firing threshold
is chosen on the first half of that task's validation episodes (episode precision >= ``--min-precision`` when
each episode stops at the first firing, as ``vla_node`` does); precision and recall are reported on the other half,
so the figures are not those the threshold was tuned on. Several head seeds show how much a fit varies.
``--cache`` keeps the collected episodes (read when the file exists;
:func:`research.done_history_probe.collected_episodes`).
"""

from __future__ import annotations

import argparse

import numpy as np


def _halves(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Row masks of the first and second half of ``data``'s episodes."""
    episodes = np.unique(data["episode"])
    first = np.isin(data["episode"], episodes[: len(episodes) // 2])
    return first, ~first


def score_task(probabilities: np.ndarray, validation: dict[str, np.ndarray], task: int,
               min_precision: float) -> dict:
    """Threshold on the task's first validation half, metrics on its second."""
    from vla_ros.policy.done_head import (
        episode_metrics,
        episodes_of_task,
        select_rows,
        threshold_for_episode_precision,
    )

    mask = episodes_of_task(validation, task)
    rows, p = select_rows(validation, mask), probabilities[mask]
    tuning, held = _halves(rows)
    threshold = threshold_for_episode_precision(p[tuning], select_rows(rows, tuning), min_precision)
    return {"threshold": threshold, "tuning": episode_metrics(p[tuning], select_rows(rows, tuning), threshold),
            "held_out": episode_metrics(p[held], select_rows(rows, held), threshold)}


def main(argv=None) -> dict:
    """Run the comparison; print one row per (variant, head seed, task); return the report."""
    import torch

    from research.done_history_probe import add_episode_arguments, collected_episodes
    from vla_ros.policy.done_head import (
        DONE_INPUT_KINDS,
        DONE_TASKS,
        done_probabilities,
        episodes_of_task,
        train_done_head,
    )
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.done_task_heads", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a skill-reader policy checkpoint (its commands read as reach or push)")
    parser.add_argument("--inputs", choices=DONE_INPUT_KINDS, default="moved", help="what the heads read")
    add_episode_arguments(parser)
    parser.add_argument("--head-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    train, validation = collected_episodes(args.checkpoint, args.episodes, args.validation_episodes,
                                           args.num_envs, args.vec_env, args.cache, inputs=args.inputs)
    tasks = [i for i in range(len(DONE_TASKS)) if episodes_of_task(validation, i).any()]
    if not tasks:
        raise ValueError(f"{args.checkpoint}: no command read as a task; the heads need a skill-reader policy")
    rows = []
    for seed in args.head_seeds:
        joint = done_probabilities(train_done_head(train["features"], train["labels"], seed=seed),
                                   validation["features"])
        for task in tasks:
            mask = episodes_of_task(train, task)
            alone = train_done_head(train["features"][mask], train["labels"][mask], seed=seed)
            for variant, probabilities in (("joint", joint),
                                           ("per_task", done_probabilities(alone, validation["features"]))):
                scored = score_task(probabilities, validation, task, args.min_precision)
                held = scored["held_out"]
                rows.append({"variant": variant, "head_seed": seed, "task": DONE_TASKS[task],
                             "threshold": round(scored["threshold"], 4),
                             "tuning_precision": scored["tuning"]["precision"],
                             "tuning_recall": scored["tuning"]["recall"], "held_out_precision": held["precision"],
                             "held_out_recall": held["recall"], "held_out_stopped": held["stopped"],
                             "held_out_reached_success": held["reached_success"]})
    print(format_table(rows, list(rows[0])))
    report = {"checkpoint": str(args.checkpoint), "inputs": args.inputs, "episodes": args.episodes,
              "validation_episodes": args.validation_episodes, "min_precision": args.min_precision, "rows": rows}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
