"""``vla-ros bench train``: training-path throughput, batched vs per-env CLIP encoding, per Ray worker count.

Both encodings step the same vectorised simulator (images + commands) through the frozen CLIP towers
and the policy network, in one run, so their ratio is the speed-up of batched encoding. With ``--workers``
the same path runs on envs hosted by that many Ray actors (``--vec-env ray``; a local Ray or ``--ray-address``),
batched encoding, one row per worker count and env count, in the same run.
"""

from __future__ import annotations

import time

import numpy as np

from vla_ros.reporting import add_json_argument


def add_arguments(parser) -> None:
    """Options of ``vla-ros bench train``."""
    parser.add_argument("--num-envs", type=int, nargs="+", default=[4, 8], help="vectorised env counts")
    parser.add_argument("--steps", type=int, default=100, help="vectorised steps per measurement")
    parser.add_argument("--vec-env", default="subproc", choices=["subproc", "dummy"])
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="also measure envs hosted by this many Ray actors, e.g. --workers 1 2")
    parser.add_argument("--ray-address", help="with --workers: join this Ray cluster instead of a local Ray")
    parser.add_argument("--skip-encodings", action="store_true",
                        help="only the --workers rows (not batched vs per-env encoding)")
    parser.add_argument("--clip", help="CLIP checkpoint folder (default: shipped models/clip)")
    parser.add_argument("--device", default="cpu", help="torch device for CLIP and the policy")
    parser.add_argument("--seed", type=int, default=0)
    add_json_argument(parser)


def measure(task: str, num_envs: int, steps: int, batched: bool, encoder, network, normalizer, vec_env: str,
            seed: int, ray_workers: int = 0) -> dict:
    """Per-step latencies (ms) of env step + CLIP + policy for all envs."""
    import torch

    from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
    from vla_ros.policy.envs import make_vec_env

    venv = ClipFeatureVecEnv(make_vec_env(task, num_envs, seed, vec_env=vec_env, ray_workers=ray_workers),
                             encoder, normalizer, batched=batched)
    try:
        obs = venv.reset()
        times = []
        for i in range(steps + 5):
            start = time.perf_counter()
            with torch.no_grad():
                actions, _ = network.predict(obs, deterministic=False)
            obs, _, _, _ = venv.step(actions)
            if i >= 5:  # warm-up steps excluded
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        venv.close()
    t = np.asarray(times)
    name = f"ray_workers={ray_workers}/envs={num_envs}" if vec_env == "ray" else \
        f"{'batched' if batched else 'per_env'}_encoding/envs={num_envs}"
    return {"name": name, "device": torch.device(encoder.device).type, "num_envs": num_envs, "vec_env": vec_env,
            "ray_workers": ray_workers,
            "p50_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)),
            "per_s": float(num_envs * 1e3 / np.median(t))}


def run(args) -> int:
    """Measure both encodings for each env count; print the table; write JSON."""
    from pathlib import Path

    import torch

    from vla_ros.grounding.encoder import ClipEncoder
    from vla_ros.paths import share_path
    from vla_ros.policy.checkpoint import build_network
    from vla_ros.policy.envs import make_vec_env
    from vla_ros.policy.proprio import ProprioNormalizer
    from vla_ros.policy.train import TrainConfig, checkpoint_config
    from vla_ros.reporting import format_table, machine_description, write_json

    torch.set_num_threads(1)
    clip = Path(args.clip) if args.clip else share_path("models", "clip")
    encoder = ClipEncoder.from_pretrained(clip, device=args.device)
    probe = make_vec_env("reach", 1, 0, vec_env="dummy")
    env = probe.envs[0].unwrapped
    config = checkpoint_config(TrainConfig(), encoder, clip, env.robot, env.control_dt, env.max_delta, clip)
    probe.close()
    network = build_network(config).to(args.device).eval()  # untrained: timing only
    normalizer = ProprioNormalizer.from_robot(env.robot)
    rows, ratios = [], {}
    for n in [] if args.skip_encodings else args.num_envs:
        pair = {}
        for batched in (True, False):
            row = measure("reach", n, args.steps, batched, encoder, network, normalizer, args.vec_env, args.seed)
            rows.append(row)
            pair[batched] = row
            print(f"{row['name']}: {row['per_s']:.0f} env steps/s", flush=True)
        ratios[f"batched/per_env@envs={n}"] = pair[True]["per_s"] / pair[False]["per_s"]
    nodes = None
    if args.workers:
        from vla_ros.distributed.ray_support import RayUnavailable, ray_session

        try:
            with ray_session(args.ray_address) as ray:
                nodes = len(ray.nodes())
                for n in args.num_envs:
                    by_workers = {}
                    for w in args.workers:
                        row = measure("reach", n, args.steps, True, encoder, network, normalizer, "ray", args.seed,
                                      ray_workers=w)
                        rows.append(row)
                        by_workers[w] = row
                        print(f"{row['name']}: {row['per_s']:.0f} env steps/s", flush=True)
                    first = min(by_workers)
                    for w, row in by_workers.items():
                        if w != first:
                            ratios[f"ray_workers={w}/ray_workers={first}@envs={n}"] = \
                                row["per_s"] / by_workers[first]["per_s"]
        except RayUnavailable as error:
            print(f"vla-ros bench train: {error}")
            return 2
    print(format_table(rows, ["name", "device", "p50_ms", "p99_ms", "per_s"]))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    write_json(args.json, {"machine": machine_description(), "ray_nodes": nodes, "rows": rows, "ratios": ratios})
    return 0
