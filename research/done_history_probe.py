"""Done heads compared: does one that sees the last few steps fire more reliably than one that sees one step.

Usage: ``python -m research.done_history_probe CHECKPOINT [--episodes 400] [--validation-episodes 200]
[--history 0 1 2 3] [--cache FILE.npz]``

Collects the policy's own episodes exactly as ``vla-ros train-done`` does (run to the time limit, each observation
labelled with the simulator's success flag; training seeds from ``DONE_SEED``, validation from
``DONE_VALIDATION_SEED``) and fits the same head (:func:`vla_ros.policy.done_head.train_done_head`) on the head
inputs of the current step plus, for history *k*, their differences to each of the *k* steps before (the
episode's first step repeats; a difference near zero says the arm has stopped). The firing threshold is chosen
on the first half of the validation episodes (episode precision >= ``--min-precision`` when each episode stops
at the first firing, as ``vla_node`` does), and precision and recall are reported on the other half, so the
reported figures are not those the threshold was tuned on. ``--cache`` keeps the collected episodes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def with_history(data: dict[str, np.ndarray], history: int) -> np.ndarray:
    """Features of each row, then their differences to the rows 1..``history`` steps earlier in its episode."""
    features = data["features"]
    index = {(int(e), int(s)): i for i, (e, s) in enumerate(zip(data["episode"], data["step"]))}
    parts = [features]
    for lag in range(1, history + 1):
        earlier = np.array([index.get((int(e), max(0, int(s) - lag)), i)
                            for i, (e, s) in enumerate(zip(data["episode"], data["step"]))])
        parts.append(features - features[earlier])
    return np.concatenate(parts, axis=1)


def _subset(data: dict[str, np.ndarray], episodes: np.ndarray) -> dict[str, np.ndarray]:
    keep = np.isin(data["episode"], episodes)
    return {key: value[keep] for key, value in data.items()}


def add_episode_arguments(parser) -> None:
    """The options of the done probes that collect episodes (:func:`collected_episodes`) and tune thresholds."""
    parser.add_argument("--episodes", type=int, default=400, help="training episodes (default 400)")
    parser.add_argument("--validation-episodes", type=int, default=200,
                        help="validation episodes, halved into threshold tuning and held-out (default 200)")
    parser.add_argument("--min-precision", type=float, default=0.97, help="episode precision the threshold needs")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--vec-env", default="subproc", choices=("subproc", "dummy"))
    parser.add_argument("--cache", help=".npz file keeping the collected episodes (read when it exists)")


def collected_episodes(checkpoint: str, episodes: int, validation_episodes: int, num_envs: int = 2,
                       vec_env: str = "subproc", cache: str | None = None, inputs: str = "policy",
                       privileged: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(training, validation) episodes of ``checkpoint`` as ``vla-ros train-done`` collects them, head ``inputs``.

    Training seeds from ``DONE_SEED``, validation from ``DONE_VALIDATION_SEED``. ``cache``: an ``.npz`` file read
    when it exists, else written after collecting (the episodes cost minutes; the heads fitted on them, seconds).
    """
    from vla_ros.commands.train_done import DONE_SEED, DONE_VALIDATION_SEED
    from vla_ros.policy.done_head import collect_done_data

    path = Path(cache) if cache else None
    if path is not None and path.is_file():
        with np.load(path) as stored:
            train = {k.removeprefix("train_"): stored[k] for k in stored.files if k.startswith("train_")}
            validation = {k.removeprefix("val_"): stored[k] for k in stored.files if k.startswith("val_")}
        return train, validation
    from vla_ros.policy.policy import Policy

    policy = Policy.load(checkpoint)
    collect_args = (policy.network, policy.encoder, policy.normalizer, policy.config.get("task", "reach"))
    kwargs = dict(num_envs=num_envs, vec_env=vec_env, progress=True, split="train", inputs=inputs,
                  privileged=privileged)
    train = collect_done_data(*collect_args, episodes, DONE_SEED, **kwargs)
    validation = collect_done_data(*collect_args, validation_episodes, DONE_VALIDATION_SEED, **kwargs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in validation.items()})
    return train, validation


def main(argv=None) -> dict:
    """Run the comparison; return {history: {"threshold", "tuning": metrics, "held_out": metrics}}."""
    import torch

    from vla_ros.policy.done_head import (
        done_probabilities,
        episode_metrics,
        threshold_for_episode_precision,
        train_done_head,
    )

    parser = argparse.ArgumentParser(prog="python -m research.done_history_probe", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="policy checkpoint folder")
    add_episode_arguments(parser)
    parser.add_argument("--history", type=int, nargs="+", default=[0, 1, 2, 3], help="steps of history compared")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    train, validation = collected_episodes(args.checkpoint, args.episodes, args.validation_episodes,
                                           args.num_envs, args.vec_env, args.cache)
    episodes = np.unique(validation["episode"])
    tuning_episodes, held_out_episodes = episodes[: len(episodes) // 2], episodes[len(episodes) // 2:]
    results = {}
    print(f"{args.checkpoint}: {len(np.unique(train['episode']))} training episodes; validation "
          f"{len(tuning_episodes)} to choose the threshold (episode precision >= {args.min_precision}), "
          f"{len(held_out_episodes)} held out")
    print(f"{'history':>7}  {'inputs':>6}  {'threshold':>9}  {'tuning P / R':>13}  {'held-out P / R':>15}  "
          f"{'held-out stopped / reached':>26}")
    for history in args.history:
        head = train_done_head(with_history(train, history), train["labels"], seed=0)
        probabilities = done_probabilities(head, with_history(validation, history))
        tuning = np.isin(validation["episode"], tuning_episodes)
        tuning_data = _subset(validation, tuning_episodes)
        threshold = threshold_for_episode_precision(probabilities[tuning], tuning_data, args.min_precision)
        tuned = episode_metrics(probabilities[tuning], tuning_data, threshold)
        held = episode_metrics(probabilities[~tuning], _subset(validation, held_out_episodes), threshold)
        results[history] = {"threshold": threshold, "inputs": int(train["features"].shape[1] * (history + 1)),
                            "tuning": tuned, "held_out": held}
        print(f"{history:>7}  {results[history]['inputs']:>6}  {threshold:>9.4f}  "
              f"{tuned['precision']:>6.3f} / {tuned['recall']:.3f}  {held['precision']:>7.3f} / {held['recall']:.3f}  "
              f"{held['stopped']:>12} / {held['reached_success']}")
    return results


if __name__ == "__main__":
    main()
