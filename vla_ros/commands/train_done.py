"""``vla-ros train-done``: fit a policy's done head on its own episodes and store it in the checkpoint.

The policy stays as it is. Training data: ``--episodes`` deterministic episodes of the ``train`` split from seed
:data:`DONE_SEED`; the firing threshold is chosen on ``--validation-episodes`` more from
:data:`DONE_VALIDATION_SEED` (neither range is used by ``vla-ros eval``, seed 1 on) as the lowest probability whose
firings are at least ``--min-precision`` right, stopping each episode where it first fires (as vla_node does).
A policy with a skill reader also gets one such threshold per task its commands read as (reach, push), chosen on
that task's validation episodes alone, and its report gives each task's figures under ``by_task``.
See :mod:`vla_ros.policy.done_head`.

Report (``--json``): ``{"checkpoint", "task", "episodes", "validation_episodes", "done": config["done"],
"train": {"precision", "recall", "stopped", "reached_success", "task_success_when_stopping", "episodes"},
"validation": {...}, "by_task"?: {"reach": {"threshold", "train": {...}, "validation": {...}}, "push": ...},
"wall_time_s"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from vla_ros.reporting import add_json_argument

DONE_SEED = 4_000_000
DONE_VALIDATION_SEED = 4_100_000


def add_arguments(parser) -> None:
    """Options of ``vla-ros train-done``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--episodes", type=int, default=400, help="training episodes (default: 400)")
    parser.add_argument("--validation-episodes", type=int, default=200, help="episodes choosing the threshold "
                        "(default: 200)")
    parser.add_argument("--min-precision", type=float, default=0.97,
                        help="share of firings on validation episodes that must be right (default: 0.97)")
    parser.add_argument("--num-envs", type=int, default=2, help="parallel simulator processes (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's initialisation (default: 0)")
    parser.add_argument("--inputs", choices=("policy", "estimates", "moved"), default="policy",
                        help="what the head reads: the policy's features, critic, value and action (policy, "
                        "default), or the fusion's position estimates, the joint state and the skill reader's "
                        "reading (estimates), or those and the current frame's own estimate and how far it moved "
                        "from the first frame's (moved; reference-prior policies)")
    parser.add_argument("--fingertip", action="store_true",
                        help="the head also reads the fingertip's image position and height, from a locator fitted "
                        "on the simulator's fingertip positions through the training camera (--inputs estimates or "
                        "moved)")
    parser.add_argument("--dry-run", action="store_true", help="report only; leave the checkpoint as it is")
    add_json_argument(parser)


def train_done(policy, episodes: int, validation_episodes: int, min_precision: float = 0.97, num_envs: int = 2,
               seed: int = 0, progress: bool = True, vec_env: str = "subproc", inputs: str = "policy",
               fingertip: bool = False):
    """(head, DoneConfig, report) for ``policy`` (a :class:`vla_ros.policy.policy.Policy`).

    ``fingertip``: fit a :class:`~vla_ros.policy.fingertip_locator.FingertipLocator` on the training episodes'
    joint states and simulator fingertip positions first; the head then reads it too.
    """
    from vla_ros.policy.done_head import (
        DONE_TASKS,
        DoneConfig,
        collect_done_data,
        done_probabilities,
        episode_metrics,
        episodes_of_task,
        proprio_columns,
        select_rows,
        task_thresholds,
        threshold_for_episode_precision,
        train_done_head,
    )

    task = policy.config.get("task", "reach")
    args = (policy.network, policy.encoder, policy.normalizer, task)
    columns = proprio_columns(policy.network, inputs) if fingertip else None  # refuses inputs without joints
    kwargs = dict(num_envs=num_envs, vec_env=vec_env, progress=progress, split="train", inputs=inputs,
                  privileged=fingertip)
    train = collect_done_data(*args, episodes, DONE_SEED, **kwargs)
    validation = collect_done_data(*args, validation_episodes, DONE_VALIDATION_SEED, **kwargs)
    locator, locator_report = None, None
    if fingertip:
        from vla_ros.policy.fingertip_locator import (
            camera_projection,
            fit_fingertip_locator,
            locator_errors,
            locator_targets,
        )

        project = camera_projection(task)
        start, end = columns
        locator = fit_fingertip_locator(train["features"][:, start:end],
                                        locator_targets(train["privileged"][:, 0:3], project), seed=seed)
        locator_report = locator_errors(locator, validation["features"][:, start:end],
                                        locator_targets(validation["privileged"][:, 0:3], project))
    head = train_done_head(train["features"], train["labels"], seed=seed, locator=locator, fingertip_proprio=columns)
    probabilities = {"train": done_probabilities(head, train["features"]),
                     "validation": done_probabilities(head, validation["features"])}
    threshold = threshold_for_episode_precision(probabilities["validation"], validation, min_precision)
    per_task = task_thresholds(probabilities["validation"], validation, min_precision)
    calibration = {"episodes": episodes, "seed": DONE_SEED, "validation_episodes": validation_episodes,
                   "validation_seed": DONE_VALIDATION_SEED, "min_precision": min_precision, "split": "train",
                   "observations": int(len(train["labels"])), "fulfilled_observations": int(train["labels"].sum())}
    if locator_report is not None:  # on the validation episodes' observations
        calibration["fingertip_locator_errors"] = locator_report
    config = DoneConfig(features_dim=int(train["features"].shape[1]), threshold=threshold, task_thresholds=per_task,
                        calibration=calibration, inputs=inputs, fingertip_proprio=columns)
    data = {"train": train, "validation": validation}
    report = {"task": task, "episodes": episodes, "validation_episodes": validation_episodes, "done": config.to_dict(),
              **{name: episode_metrics(probabilities[name], rows, config.thresholds(rows["task"]))
                 for name, rows in data.items()}}
    if per_task:
        report["by_task"] = {}
        for index, name in enumerate(DONE_TASKS):
            if name not in per_task:
                continue
            entry = {"threshold": per_task[name]}
            for split, rows in data.items():
                mask = episodes_of_task(rows, index)
                entry[split] = episode_metrics(probabilities[split][mask], select_rows(rows, mask), per_task[name])
            report["by_task"][name] = entry
    return head, config, report


def save_done_head(checkpoint: Path, head, config) -> None:
    """Write ``done_head.safetensors`` and ``config["done"]`` into ``checkpoint``."""
    from safetensors.torch import save_file

    from vla_ros.policy.done_head import DONE_WEIGHTS_FILE

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(checkpoint / DONE_WEIGHTS_FILE))
    path = checkpoint / "config.json"
    data = json.loads(path.read_text())
    data["done"] = config.to_dict()
    path.write_text(json.dumps(data, indent=2) + "\n")


def run(args) -> int:
    """Fit, print precision and recall, store the head."""
    import time

    import torch

    from vla_ros.paths import share_path
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    torch.set_num_threads(1)
    start = time.perf_counter()
    checkpoint = Path(args.checkpoint) if args.checkpoint else share_path("models", "policy")
    policy = Policy.load(checkpoint)
    head, config, report = train_done(policy, args.episodes, args.validation_episodes, args.min_precision,
                                      args.num_envs, args.seed, inputs=args.inputs, fingertip=args.fingertip)
    report = {"checkpoint": str(checkpoint), **report, "wall_time_s": round(time.perf_counter() - start, 1)}
    columns = ["precision", "recall", "stopped", "reached_success", "task_success_when_stopping"]
    rows = [{"episodes": name, **{k: report[name][k] for k in columns}} for name in ("train", "validation")]
    for name, entry in report.get("by_task", {}).items():
        rows += [{"episodes": f"{name}/{split}", **{k: entry[split][k] for k in columns}}
                 for split in ("train", "validation")]
    print(format_table(rows, ["episodes", *columns]))
    print(f"done threshold {config.threshold:.4f} (validation precision >= {args.min_precision})"
          + "".join(f", {name} {value:.4f}" for name, value in config.task_thresholds.items()))
    if not args.dry_run:
        save_done_head(checkpoint, head, config)
        print(f"done head written to {checkpoint}")
    write_json(args.json, report)
    return 0
