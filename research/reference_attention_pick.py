"""How often a reference-frame policy's attention on an episode's first frame lands on the commanded object.

Usage: ``.venv/bin/python scripts/reference_attention_pick.py CHECKPOINT SPLIT EPISODES``

For each episode it takes the attended image position over the reference (first) frame and counts it as
right when the commanded object is the nearest object to it. It also counts successes. The episodes are
the env's seeds from 777, with 2 simulator processes. This separates the policy's own grounding from
the CLIP's (`vla-ros eval-clip` measures the CLIP's), and counts the episodes by (grounded, succeeded), so
failures to execute show apart from failures to ground.
"""

import sys

import numpy as np
import torch

from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
from vla_ros.policy.envs import make_vec_env
from vla_ros.policy.policy import Policy

NUM_ENVS = 2


def main() -> None:
    """Parse the arguments, run the episodes, print the counts."""
    checkpoint, split, episodes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    policy = Policy.load(checkpoint)
    if not policy.reference_frame:
        raise SystemExit(f"{checkpoint} has no reference frame")
    venv = ClipFeatureVecEnv(make_vec_env("reach", NUM_ENVS, 777, vec_env="subproc", split=split), policy.encoder,
                             policy.normalizer, reference_frame=True)
    fusion = policy.network.features_extractor.fusion
    size = int(policy.config.get("env", {}).get("image_size", 64))  # object pixels are in frame pixels
    obs = venv.reset()
    infos, first = list(venv.reset_infos), [True] * NUM_ENVS
    hits = frames = successes = done = 0
    grounded = [False] * NUM_ENVS
    outcomes = {(g, s): 0 for g in (True, False) for s in (True, False)}  # (grounded, succeeded) -> episodes
    try:
        while done < episodes:
            action, _ = policy.network.predict(obs, deterministic=True)
            attended = fusion.last_reference_xy.detach().numpy()  # (-1..1) image coordinates
            for i in range(NUM_ENVS):
                if first[i]:
                    pixels = np.stack([np.asarray(o["pixel"]) / size * 2 - 1 for o in infos[i]["objects"]])
                    nearest = int(np.argmin(np.linalg.norm(pixels - attended[i], axis=1)))
                    grounded[i] = nearest == infos[i]["target"]["index"]
                    hits += int(grounded[i])
                    frames += 1
                    first[i] = False
            obs, _, dones, step_infos = venv.step(action)
            for i in range(NUM_ENVS):
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


if __name__ == "__main__":
    main()
