"""``vla-ros eval``: success rate per task and instruction split, ablations side by side, JSON.

Report (``--json``): ``{"checkpoint", "episodes_per_split", "scene_seed", "workers",
"seeding": "per_env"|"per_episode",
"refusal": rule or null, "lexicon": bool, "splits":
{"<task>/<split>": {"success_rate", "ci95": [lo, hi], "episodes", "mean_length", "refusal_rate", "refusal_ci95",
"by_corruption"?, "by_word_kind"?, "done_signal"?: {"precision", "recall", "stopped", "reached_success",
"task_success_when_stopping", "episodes"}}}, "ablations":
{"<variant>": {"<task>/<split>": {...}}}}``.

The checkpoint runs with its refusal rule (``config.json``'s ``refusal``): on valid splits ``refusal_rate`` counts
false refusals, on ``corrupted`` correct ones. A checkpoint with a learned done signal (``vla-ros train-done``)
also gets its precision and recall on :data:`DONE_SPLITS`, from a second pass of the same scenes run to the time
limit, each episode stopped where the signal first fires (see :mod:`vla_ros.policy.done_head`). Ablations
measure the network alone, without refusal.

``--workers N`` runs the episodes on N Ray actors (:mod:`vla_ros.distributed.sharded_eval`): a local Ray on this
machine, or the cluster at ``--ray-address``. Each episode is then seeded by its index, so any worker layout (and
a worker lost mid-run, whose episodes are rerun) gives the same report; the default vectorised path seeds its
envs instead and draws other scenes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vla_ros.reporting import add_json_argument

DEFAULT_SPLITS = ("train", "heldout_combos", "heldout_phrasings", "heldout_words", "distractors", "jitter",
                  "corrupted")
ALL_SPLITS = (*DEFAULT_SPLITS, "validation_words")
ABLATIONS = ("image_blind", "command_blind", "late", "gated", "cross_attention", "region", "no_reference", "no_peak",
             "no_stitch", "map_weights", "rgb_clip", "scratch_text")


def add_arguments(parser) -> None:
    """Options of ``vla-ros eval``."""
    parser.add_argument("--checkpoint", help="policy checkpoint folder (default: the shipped models/policy)")
    parser.add_argument("--episodes", type=int, default=200, help="episodes per split (default: 200)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the evaluation scenes (default: 1)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), choices=[*ALL_SPLITS, "custom"],
                        help="instruction splits to evaluate (validation_words: the words runs are chosen on)")
    parser.add_argument("--templates", help="YAML instruction file (the simulator's format) evaluated as the "
                        "'custom' split with its held-out phrasings")
    parser.add_argument("--ablations", nargs="*", default=["image_blind", "command_blind"], choices=ABLATIONS,
                        help="ablations evaluated on --ablation-splits: image_blind / command_blind zero one "
                        "modality of this checkpoint; late / gated / cross_attention / region load the checkpoints "
                        "trained with that fusion from --ablation-dir; no_reference loads the one trained "
                        "without a reference frame (memory of the episode's first frame), no_peak the region_map "
                        "policy without the peak position estimate, no_stitch the one on the CLIP's own 8x8 patch "
                        "grid (no shift-and-stitch), map_weights the one whose MLP also reads the map itself, "
                        "rgb_clip the same recipe on a CLIP that reads RGB instead of value, saturation and hue, "
                        "scratch_text the same recipe on a CLIP whose text tower was trained from scratch on the "
                        "simulator's captions (no pretrained sentence encoder, no presence term)")
    parser.add_argument("--no-refusal", action="store_true",
                        help="act on every command, ignoring the checkpoint's refusal rule")
    parser.add_argument("--no-lexicon", action="store_true",
                        help="read commands as written, ignoring the checkpoint's lexicon (words outside the CLIP's "
                        "vocabulary read through WordNet; vla_ros.grounding.lexicon): the CLIP-alone ablation")
    parser.add_argument("--ablation-splits", nargs="+", default=["train"], choices=[*ALL_SPLITS],
                        help="splits evaluated for each ablation (default: train)")
    parser.add_argument("--ablation-dir", help="folder with one checkpoint per fusion kind "
                        "(default: models/ablations)")
    parser.add_argument("--num-envs", type=int, default=2, help="parallel simulator processes (default: 2)")
    parser.add_argument("--workers", type=int, default=0,
                        help="run the episodes on this many Ray actors (one CPU each, on any node of the cluster), "
                        "each episode seeded by its index so that any worker layout gives the same results; "
                        "0 (default): the vectorised path in this process (--num-envs), which seeds envs instead "
                        "of episodes and so draws other scenes")
    parser.add_argument("--ray-address", help="with --workers: join this Ray cluster (host:port or auto) instead "
                        "of starting a local Ray on this machine")
    parser.add_argument("--video", metavar="DIR", help="also write one sample MP4 per split into DIR (viewing "
                        "camera, policy view + grounding heatmap, command)")
    add_json_argument(parser)


DONE_SPLITS = ("train", "heldout_combos", "heldout_phrasings", "heldout_words")  # where the done signal is scored


def _score_done(policy, task: str, done, args, env_kwargs: dict, split_kwargs: dict) -> dict:
    """Episodes of the split run to the time limit; each stops where the done signal first fires."""
    from vla_ros.policy.done_head import collect_done_data, done_probabilities, episode_metrics

    head, config = done
    data = collect_done_data(policy.network, policy.encoder, policy.normalizer, task, args.episodes, args.seed,
                             num_envs=args.num_envs, progress=True, inputs=config.inputs, **env_kwargs,
                             **split_kwargs)
    # each observation's threshold is its command's task's (as vla_node applies it), or the one threshold
    return episode_metrics(done_probabilities(head, data["features"]), data, config.thresholds(data["task"]))


def _evaluate_tasks(policy, splits, args, env_kwargs, **kwargs) -> dict:
    """Each task the checkpoint knows (reach and push for a ``mixed`` one), each split: ``{"<task>/<split>": ...}``."""
    from vla_ros.policy.envs import checkpoint_tasks

    results = {}
    for task in checkpoint_tasks(policy.config["task"]):
        results.update(_evaluate_splits(policy, task, splits, args, env_kwargs, **kwargs))
    return results


def _evaluate_splits(policy, task: str, splits, args, env_kwargs, image_scale=1.0, text_scale=1.0,
                     refusal=None, done=None, pool=None) -> dict:
    """Each split's report entry for one task; with ``pool`` (a :class:`ShardedEvaluator`) on Ray actors."""
    from vla_ros.policy.evaluate import SPLITS, run_episodes

    results = {}
    for split in splits:
        kwargs = dict(SPLITS.get(split, {"split": "heldout_phrasings"}))
        if split == "custom":
            kwargs["templates_path"] = str(Path(args.templates).resolve())
        if pool is not None:
            result = pool.run_split(split, {**kwargs, "task": task}, args.episodes, args.seed,
                                    refusal=refusal is not None, image_scale=image_scale, text_scale=text_scale)
        else:
            result = run_episodes(policy.network, policy.encoder, policy.normalizer, task, args.episodes,
                                  args.seed, num_envs=args.num_envs, image_scale=image_scale,
                                  text_scale=text_scale, refusal=refusal, progress=True, **env_kwargs, **kwargs)
        results[f"{task}/{split}"] = result.report()
        print(f"  {task}/{split}: success {result.success_rate:.3f} ({result.successes}/{result.episodes}), "
              f"refused {result.refusal_rate:.3f}"
              + (f", pushed the wrong way {result.wrong_way / max(1, result.episodes):.3f}"
                 if result.wrong_way is not None else ""), flush=True)
        if done is not None and split in DONE_SPLITS:
            results[f"{task}/{split}"]["done_signal"] = metrics = _score_done(policy, task, done, args, env_kwargs,
                                                                               kwargs)
            print(f"    done signal: precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, "
                  f"success when stopping on it {metrics['task_success_when_stopping']:.3f}", flush=True)
        for kind, (wins, n, refused) in [*sorted(result.by_corruption.items()), *sorted(result.by_word_kind.items())]:
            print(f"    {kind}: success {wins / n:.3f} ({wins}/{n}), refused {refused / n:.3f}", flush=True)
        if getattr(args, "video", None) and image_scale == text_scale == 1.0:
            _write_sample_video(policy, task, split, kwargs, env_kwargs, args)
    return results


def _write_sample_video(policy, task: str, split: str, split_kwargs: dict, env_kwargs: dict, args) -> None:
    import gymnasium as gym

    import vla_ros.envs  # noqa: F401  (registers the ids)
    from vla_ros.envs.video import write_video
    from vla_ros.policy.envs import env_id
    from vla_ros.policy.rollout import run_episode

    env = gym.make(env_id(task), **env_kwargs, **split_kwargs)
    try:
        episode = run_episode(policy, env, seed=args.seed, record=True)
    finally:
        env.close()
    path = write_video(episode.frames, Path(args.video) / f"{task}_{split}.mp4", fps=10)
    print(f"    video {path}: {episode.command!r} -> {'success' if episode.success else 'failure'}")


def run(args) -> int:
    """Evaluate and print the tables (on Ray actors with ``--workers``)."""
    if args.workers < 0:
        raise SystemExit("vla-ros eval: --workers must be >= 0")
    if args.workers == 0:
        return _run(args, None)
    from vla_ros.distributed.ray_support import RayUnavailable, ray_session

    try:
        with ray_session(args.ray_address) as ray:
            print(f"Ray: {ray.cluster_resources().get('CPU', 0):.0f} CPUs on {len(ray.nodes())} node(s), "
                  f"{args.workers} workers", flush=True)
            return _run(args, ray)
    except RayUnavailable as error:
        print(f"vla-ros eval: {error}", file=sys.stderr)
        return 2


def _run(args, ray) -> int:
    import torch

    from vla_ros.paths import share_path
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    torch.set_num_threads(1)
    if "custom" in args.splits and not args.templates:
        raise SystemExit("vla-ros eval: the 'custom' split needs --templates FILE")
    if args.templates and "custom" not in args.splits:
        args.splits.append("custom")
    checkpoint = Path(args.checkpoint) if args.checkpoint else share_path("models", "policy")
    if args.no_lexicon and ray is not None:
        raise SystemExit("vla-ros eval: --no-lexicon runs in process only (leave out --workers)")
    policy = Policy.load(checkpoint, lexicon=not args.no_lexicon)
    task = policy.config["task"]  # "mixed": reach and push, each scored on its own
    env_kwargs = dict(policy.config.get("env", {}))
    refusal = None if args.no_refusal else policy.refusal_rule
    lexicon = policy.encoder.lexicon is not None
    print(f"evaluating {checkpoint} on {task}, {args.episodes} episodes per split, "
          f"{'refusal threshold %.3f' % refusal.threshold if refusal else 'no refusal'}, "
          f"{'with' if lexicon else 'without'} lexicon", flush=True)
    pools = _Pools(args) if ray is not None else None
    report = {"checkpoint": str(checkpoint), "episodes_per_split": args.episodes, "scene_seed": args.seed,
              "workers": args.workers, "seeding": "per_episode" if ray is not None else "per_env",
              "refusal": refusal.to_dict() if refusal else None, "lexicon": lexicon, "splits": {}, "ablations": {}}
    try:
        report["splits"] = _evaluate_tasks(policy, args.splits, args, env_kwargs, refusal=refusal,
                                           done=(policy.done_head, policy.done_config)
                                           if policy.has_done_signal else None,
                                           pool=pools.get(checkpoint) if pools else None)
        _evaluate_ablations(report, policy, args, env_kwargs, pools)
    finally:
        if pools:
            pools.close()
    rows = [{"variant": "checkpoint", "split": k, **v} for k, v in report["splits"].items()]
    rows += [{"variant": name, "split": k, **v} for name, res in report["ablations"].items() for k, v in res.items()]
    print(format_table(rows, ["variant", "split", "success_rate", "ci95", "refusal_rate", "episodes",
                              "mean_length"]))
    write_json(args.json, report)
    return 0


class _Pools:
    """One :class:`ShardedEvaluator` per checkpoint evaluated (the checkpoint and each ablation)."""

    def __init__(self, args):
        self.args = args
        self.pools = {}

    def get(self, checkpoint: Path):
        from vla_ros.distributed.sharded_eval import ShardedEvaluator

        key = str(Path(checkpoint).resolve())
        if key not in self.pools:
            for pool in self.pools.values():  # one checkpoint's workers at a time: they hold a CPU each
                pool.close()
            self.pools = {key: ShardedEvaluator(key, self.args.workers)}
        return self.pools[key]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def _evaluate_ablations(report: dict, policy, args, env_kwargs: dict, pools: _Pools | None) -> None:
    from vla_ros.paths import share_path
    from vla_ros.policy.policy import Policy

    ablation_dir = Path(args.ablation_dir) if args.ablation_dir else share_path("models", "ablations")
    for name in args.ablations:
        print(f"ablation {name}", flush=True)
        if name in ("image_blind", "command_blind"):
            scales = {"image_scale": 0.0} if name == "image_blind" else {"text_scale": 0.0}
            report["ablations"][name] = _evaluate_tasks(policy, args.ablation_splits, args, env_kwargs,
                                                        pool=pools.get(policy.checkpoint) if pools else None,
                                                        **scales)
        else:
            path = ablation_dir / name
            if not path.is_dir():
                print(f"  skipped: no checkpoint at {path}")
                continue
            variant = Policy.load(path)
            report["ablations"][name] = _evaluate_tasks(variant, args.ablation_splits, args, env_kwargs,
                                                        pool=pools.get(path) if pools else None)
