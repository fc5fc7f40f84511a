"""A done signal by rule instead of a learned head: metric geometry from the fusion's estimates.

Usage: ``python -m research.done_rule_probe CHECKPOINT [--inputs moved|estimates] [--episodes 10]
[--validation-episodes 300] [--cache FILE.npz] [--json FILE]``

The learned done heads fall short of the issue's bars (precision 0.95 and recall 0.90 per task): reach's
precision misses on held-out scenes, push's signal hardly fires (docs/EXPERIMENT_LOG.md, fourteenth and fifteenth
sessions). Both successes are geometric: reach is the fingertip within 5 cm of the object's centre, push the
object moved 8 cm along the commanded direction. This probe scores rules that compute those quantities in metres
instead of learning them:

- the object: the fusion's image estimate back-projected through the training camera onto the horizontal plane
  of the objects' centres (a homography; :func:`plane_homography`): for reach the episode's first frame's
  estimate (the object unoccluded and, in a reach, not moving), for push the current frame's;
- the fingertip: the simulator's fingertip position, which forward kinematics of the joint state gives exactly
  on a robot with a URDF (no perception);
- ``reach``: fires when the fingertip is within a distance of the object; ``push``: when the object's estimated
  displacement from its first-frame estimate along the commanded direction passes a distance;
  ``push_clear``: the same, only while the fingertip is at least 6 cm from the estimated object, where the
  arm does not cover it; ``push_fingertip``: when the fingertip (forward kinematics, never hidden) has passed the
  object's located start along the commanded direction by a distance, counted only once it has been behind the
  object within ``ENGAGED`` of it earlier in the episode (a push moves the object ahead of the fingertip, so how
  far the fingertip went from there is how far the object went, less its radius; an arm that starts ahead of the
  object along the direction has pushed nothing); ``*_located``: the same rules with the object's start taken
  from the current estimate of the episode's first frame (an object locator's, where the reference estimate is the
  CLIP map's); ``*_true``: the same rules on the simulator's true object position (what the rule gives with
  perfect perception).

``episode_ends`` says whether the policy stays where its task is fulfilled: of each task's episodes (run to the
time limit), how many reach success, how many end in it, and the last observation's median fingertip-object
distance (reach) or displacement along the direction (push).

A row's ``threshold_score_m`` is the tuned level of its score in metres: minus the fingertip-object distance
for reach, the displacement along the direction for push.

Each rule's one distance is tuned like a head's threshold: on the first half of each task's validation episodes
(precision >= ``--min-precision`` stopping at the first firing), scored on the second
(:func:`research.done_task_heads.score_task`). The episodes are collected as ``vla-ros train-done`` collects them
(:func:`research.done_history_probe.collected_episodes`, with the simulator's state); only the validation ones are
used (no rule is trained), so ``--episodes`` can stay small.
"""

from __future__ import annotations

import argparse

import numpy as np

CLEAR = 0.06  # m between fingertip and estimated object beyond which the arm does not cover it
RULES = ("reach", "reach_located", "reach_true", "push", "push_located", "push_clear", "push_fingertip",
         "push_fingertip_true", "push_true")
ENGAGED = 0.06  # m: the fingertip behind the object and this close to its start has engaged it (push_fingertip)
SCALE = 0.01  # m: scores (metres) pass through a sigmoid of this scale so thresholds are probabilities


def plane_homography(project, height: float, half_extent: float = 0.6) -> np.ndarray:
    """3x3 homography from image positions in [-1, 1] to world (x, y) on the plane ``z = height``.

    ``project`` maps world points (N, 3) to image positions (N, 2) through the camera (pinhole: the map between a
    plane and the image is a homography, fitted here by DLT on a grid of the plane's points).
    """
    grid = np.linspace(-half_extent, half_extent, 21)
    xy = np.array([(x, y) for x in grid for y in grid])
    image = project(np.concatenate([xy, np.full((len(xy), 1), height)], axis=1)).astype(np.float64)
    rows = []
    for (u, v), (x, y) in zip(image, xy):
        rows.append([u, v, 1, 0, 0, 0, -x * u, -x * v, -x])
        rows.append([0, 0, 0, u, v, 1, -y * u, -y * v, -y])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    return vt[-1].reshape(3, 3) / vt[-1, -1]


def to_plane(homography: np.ndarray, image_xy: np.ndarray) -> np.ndarray:
    """World (x, y) (N, 2) of image positions (N, 2) in [-1, 1] on the homography's plane."""
    points = np.concatenate([image_xy, np.ones((len(image_xy), 1))], axis=1) @ homography.T
    return points[:, :2] / points[:, 2:3]


def first_rows(episode: np.ndarray, step: np.ndarray) -> np.ndarray:
    """For each row, the index of its episode's row with the smallest step (N,)."""
    order = np.lexsort((step, episode))
    starts = np.flatnonzero(np.r_[True, episode[order][1:] != episode[order][:-1]])
    first = order[starts]  # one per episode, in sorted episode order
    return first[np.searchsorted(episode[first], episode)]


def engaged_since(data: dict[str, np.ndarray], engaged_now: np.ndarray) -> np.ndarray:
    """(N,) whether each row's episode had an ``engaged_now`` row at this step or before."""
    order = np.lexsort((data["step"], data["episode"]))
    episode, flags = data["episode"][order], engaged_now[order].astype(np.int64)
    starts = np.r_[True, episode[1:] != episode[:-1]]
    total = np.cumsum(flags)
    before = np.maximum.accumulate(np.where(starts, np.arange(len(flags)), 0))  # each row's episode's first row
    offset = np.where(before > 0, total[np.maximum(before - 1, 0)], 0)
    result = np.empty(len(flags), bool)
    result[order] = (total - offset) > 0
    return result


def rule_scores(data: dict[str, np.ndarray], project, columns: tuple[slice, slice]) -> dict:
    """Each rule's score (N,) in metres (higher: more done) for collected rows with ``privileged`` state.

    ``project``: the camera's projection (:func:`vla_ros.policy.fingertip_locator.camera_projection`); the objects'
    plane is at the median height of the targets' starts.
    """
    state = data["privileged"].astype(np.float64)
    fingertip, target, start, direction = state[:, 0:3], state[:, 3:6], state[:, 6:9], state[:, 9:12]
    height = float(np.median(start[:, 2]))
    homography = plane_homography(project, height)
    reference = to_plane(homography, data["features"][:, columns[0]].astype(np.float64))
    current = to_plane(homography, data["features"][:, columns[1]].astype(np.float64))
    as_3d = lambda xy: np.concatenate([xy, np.full((len(xy), 1), height)], axis=1)  # noqa: E731
    along = lambda moved: np.sum(moved * direction[:, :2], axis=1)  # noqa: E731
    covered = np.linalg.norm(fingertip - as_3d(current), axis=1) < CLEAR
    push = along(current - reference)
    located = current[first_rows(data["episode"], data["step"])]  # each episode's first current estimate

    def fingertip_push(start_xy):
        along_start = along(fingertip[:, :2] - start_xy)
        near = np.linalg.norm(fingertip[:, :2] - start_xy, axis=1) < ENGAGED
        return np.where(engaged_since(data, near & (along_start < 0)), along_start, -1.0)

    return {"reach": -np.linalg.norm(fingertip - as_3d(reference), axis=1),
            "reach_located": -np.linalg.norm(fingertip - as_3d(located), axis=1),
            "push_located": along(current - located),
            "reach_true": -np.linalg.norm(fingertip - target, axis=1),
            "push": push, "push_clear": np.where(covered, -1.0, push),
            "push_fingertip": fingertip_push(located), "push_fingertip_true": fingertip_push(start[:, :2]),
            "push_true": along((target - start)[:, :2])}


def episode_ends(data: dict[str, np.ndarray], task: int) -> dict:
    """Whether ``task``'s episodes stay fulfilled.

    How many reach success, how many end in it, and the median of the last observation's fingertip-object
    distance (reach) or displacement along the direction (push), in metres.
    """
    state = data["privileged"].astype(np.float64)
    rows = np.flatnonzero(np.asarray(data["task"]) == task)
    episodes = np.unique(data["episode"][rows])
    reached = ended = 0
    finals = []
    for episode in episodes:
        mine = rows[data["episode"][rows] == episode]
        mine = mine[np.argsort(data["step"][mine])]
        reached += int(data["labels"][mine].any())
        ended += int(data["labels"][mine[-1]])
        last = state[mine[-1]]
        finals.append(np.linalg.norm(last[0:3] - last[3:6]) if task == 0 else
                      float((last[3:5] - last[6:8]) @ last[9:11]))
    return {"episodes": int(len(episodes)), "reached_success": reached, "ended_in_success": ended,
            "median_final_m": float(np.median(finals)) if finals else float("nan")}


def main(argv=None) -> dict:
    """Score every rule on the held-out half of each task's validation episodes; print and return the report."""
    import torch

    from research.done_history_probe import add_episode_arguments, collected_episodes
    from research.done_task_heads import score_task
    from vla_ros.keys import OBS_PROPRIO
    from vla_ros.policy.done_head import DONE_TASKS, episodes_of_task, estimate_columns
    from vla_ros.policy.fingertip_locator import camera_projection
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.done_rule_probe", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a skill-reader policy checkpoint with a reference frame")
    parser.add_argument("--inputs", choices=("moved", "estimates"), default="moved",
                        help="done inputs to collect: moved (a reference-prior policy) or estimates (a locator's)")
    add_episode_arguments(parser)
    parser.set_defaults(episodes=10, validation_episodes=300)
    parser.add_argument("--proprio-width", type=int,
                        help="joint-state width in the done inputs (default: read from the checkpoint)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    proprio = args.proprio_width
    if proprio is None:
        proprio = int(Policy.load(args.checkpoint).network.observation_space[OBS_PROPRIO].shape[0])
    _, validation = collected_episodes(args.checkpoint, args.episodes, args.validation_episodes, args.num_envs,
                                       args.vec_env, args.cache, inputs=args.inputs, privileged=True)
    columns = estimate_columns(validation["features"].shape[1], args.inputs, proprio)
    scores = rule_scores(validation, camera_projection(), columns)
    rows = []
    for rule in RULES:
        task = DONE_TASKS.index(rule.split("_")[0])
        if not episodes_of_task(validation, task).any():
            continue
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(scores[rule] / SCALE, -50, 50)))
        scored = score_task(probabilities, validation, task, args.min_precision)
        held, level = scored["held_out"], float(np.clip(scored["threshold"], 1e-9, 1 - 1e-9))
        rows.append({"rule": rule, "threshold_score_m": round(float(SCALE * np.log(level / (1 - level))), 4),
                     "tuning_precision": scored["tuning"]["precision"], "tuning_recall": scored["tuning"]["recall"],
                     "held_out_precision": held["precision"], "held_out_recall": held["recall"],
                     "held_out_stopped": held["stopped"], "held_out_reached_success": held["reached_success"]})
    print(format_table(rows, list(rows[0])))
    ends = {DONE_TASKS[t]: episode_ends(validation, t) for t in range(len(DONE_TASKS))
            if episodes_of_task(validation, t).any()}
    print(format_table([{"task": t, **e} for t, e in ends.items()],
                       ["task", "episodes", "reached_success", "ended_in_success", "median_final_m"]))
    report = {"checkpoint": str(args.checkpoint), "inputs": args.inputs,
              "validation_episodes": args.validation_episodes, "min_precision": args.min_precision,
              "clear_m": CLEAR, "rows": rows, "episode_ends": ends}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
