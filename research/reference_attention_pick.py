"""How often a reference-frame policy's attention on an episode's first frame lands on the commanded object.

Usage: ``.venv/bin/python -m research.reference_attention_pick CHECKPOINT --split SPLIT --episodes EPISODES``

For each episode it takes the attended image position over the reference (first) frame and counts it as
right when the commanded object is the nearest object to it. It also counts successes. The episodes are
the reach env's seeds from 777 (``--seed``), with 2 simulator processes (``--num-envs``). This separates the
policy's own grounding from the CLIP's (`vla-ros eval-clip` measures the CLIP's), and counts the episodes by
(grounded, succeeded), so failures to execute show apart from failures to ground.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vla_ros.envs.instructions import SPLITS
from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
from vla_ros.policy.envs import make_vec_env
from vla_ros.policy.policy import Policy


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``argv``: without the program name; ``None``: ``sys.argv``)."""
    parser = argparse.ArgumentParser(prog="python -m research.reference_attention_pick",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="policy checkpoint folder with a reference frame (e.g. models/policy)")
    parser.add_argument("--split", required=True, choices=SPLITS, help="the env split the episodes come from")
    parser.add_argument("--episodes", type=int, required=True,
                        help="episodes to run (the last batch of parallel episodes may add a few)")
    parser.add_argument("--seed", type=int, default=777, help="seed of the first env (default: %(default)s)")
    parser.add_argument("--num-envs", type=int, default=2, help="parallel envs (default: %(default)s)")
    parser.add_argument("--vec-env", default="subproc", choices=("subproc", "dummy"),
                        help="simulator processes, or all envs in this process (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Parse the arguments, run the episodes, print the counts.

    Returns ``{"hits", "frames", "successes", "episodes", "outcomes"}``: first frames whose attended position
    lies nearest the commanded object, first frames, successful and finished episodes, and ``outcomes``
    ``{(grounded, succeeded): episodes}``.
    """
    args = parse_args(argv)
    checkpoint, split, episodes, num_envs = args.checkpoint, args.split, args.episodes, args.num_envs
    torch.set_num_threads(1)
    policy = Policy.load(checkpoint)
    if not policy.reference_frame:
        raise SystemExit(f"{checkpoint} has no reference frame")
    venv = ClipFeatureVecEnv(make_vec_env("reach", num_envs, args.seed, vec_env=args.vec_env, split=split),
                             policy.encoder, policy.normalizer, reference_frame=True)
    extractor = policy.network.features_extractor
    size = int(policy.config.get("env", {}).get("image_size", 64))  # object pixels are in frame pixels
    obs = venv.reset()
    infos, first = list(venv.reset_infos), [True] * num_envs
    hits = frames = successes = done = 0
    grounded = [False] * num_envs
    outcomes = {(g, s): 0 for g in (True, False) for s in (True, False)}  # (grounded, succeeded) -> episodes
    try:
        while done < episodes:
            action, _ = policy.network.predict(obs, deterministic=True)
            with torch.no_grad():
                tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in obs.items()}
                attended = extractor.extract(tensors)[1].reference_xy.numpy()  # (-1..1) image coordinates
            for i in range(num_envs):
                if first[i]:
                    pixels = np.stack([np.asarray(o["pixel"]) / size * 2 - 1 for o in infos[i]["objects"]])
                    nearest = int(np.argmin(np.linalg.norm(pixels - attended[i], axis=1)))
                    grounded[i] = nearest == infos[i]["target"]["index"]
                    hits += int(grounded[i])
                    frames += 1
                    first[i] = False
            obs, _, dones, step_infos = venv.step(action)
            for i in range(num_envs):
                if dones[i]:
                    successes += int(step_infos[i]["is_success"])
                    outcomes[grounded[i], bool(step_infos[i]["is_success"])] += 1
                    done += 1
                    first[i] = True
                infos[i] = venv.reset_infos[i] if dones[i] else step_infos[i]
    finally:
        venv.close()
    print(f"{checkpoint} {split}: reference attention nearest the commanded object on {hits}/{frames} first "
          f"frames; success {successes}/{done}")
    for (hit, success), count in outcomes.items():
        print(f"  {'grounded' if hit else 'not grounded'}, {'success' if success else 'failure'}: {count}")
    return {"hits": hits, "frames": frames, "successes": successes, "episodes": done, "outcomes": outcomes}


if __name__ == "__main__":
    main()
