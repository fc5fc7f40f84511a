"""How far off a policy's estimate of the pushed object is on its own push states, under each kind of prior.

Usage: ``python -m research.push_prior_estimates CHECKPOINT [--episodes 60] [--seed 6000000]
[--prior-weights 1 2] [--spreads 1 1.5 2] [--json FILE]``

The checkpoint (a reference-frame ``region_map`` policy) pushes, deciding as on the robot; at each of its decisions
the frame's map (its own learned temperature) gives the commanded object's image position with: no prior, the
first frame's map as a prior at each ``--prior-weights`` weight (``reference_prior``), and that map spread by a
Gaussian of each ``--spreads`` CLIP patches (``prior_spread``) at the same weights. Errors against the object's
true projected position (image half-widths), per state: whether the object has moved 2 cm yet and whether the
fingertip is within 5 cm of it. :mod:`research.push_estimate_errors` asks the same on the expert's states; these are
the states a policy's failed pushes are made of (:mod:`research.push_failures`). Seeds from 6,000,000.
"""

from __future__ import annotations

import argparse

import numpy as np

from vla_ros.grounding.object_locator import JUMP  # image half-widths: an estimate that has jumped

PROBE_SEED = 6_000_000
MOVED = 0.02  # m: the object has been pushed
NEAR = 0.05  # m: the fingertip is next to it (horizontally)
STATES = (("not moved, fingertip < 5 cm", False, True), ("not moved, fingertip >= 5 cm", False, False),
          ("moved, fingertip < 5 cm", True, True), ("moved, fingertip >= 5 cm", True, False))


def summarise(rows: list[dict], settings: list[str]) -> list[dict]:
    """One row per (state, setting): decisions, median error and the share off by more than 0.2."""
    table = []
    for name, moved, near in STATES:
        keep = [r for r in rows if (r["moved_m"] >= MOVED) == moved and (r["fingertip_m"] < NEAR) == near]
        for setting in settings:
            errors = np.asarray([r[setting] for r in keep])
            table.append({"state": name, "prior": setting, "decisions": len(keep),
                          "median_error": float(np.median(errors)) if len(errors) else float("nan"),
                          "share_off_by_0.2": float(np.mean(errors > JUMP)) if len(errors) else float("nan")})
    return table


def main(argv=None) -> dict:
    """Run the policy's push episodes; print the table and return the report."""
    import gymnasium as gym
    import torch

    import vla_ros.envs  # noqa: F401  (registers the envs)
    from vla_ros.grounding.fusion import log_gaussian_window, spread_logits
    from vla_ros.keys import FEAT_IMAGE_PATCHES, FEAT_REFERENCE_PATCHES, FEAT_TEXT
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_prior_estimates",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a reference-frame region_map policy checkpoint")
    parser.add_argument("--episodes", type=int, default=60, help="push episodes (default 60)")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help=f"first scene seed (default {PROBE_SEED})")
    parser.add_argument("--prior-weights", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--spreads", type=float, nargs="*", default=[1.0, 1.5, 2.0], help="CLIP patches")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    fusion = policy.network.features_extractor.fusion
    if not getattr(fusion, "reference_frame", False) or not hasattr(fusion, "logits"):
        raise SystemExit(f"{args.checkpoint}: needs a reference-frame region_map policy")
    stitch = int(policy.config["network"].get("patch_stitch", 1))
    grid = int(np.sqrt(fusion.coordinates.shape[0]))
    windows = {s: log_gaussian_window(grid, grid, s * stitch) for s in args.spreads}
    priors = {"none": lambda current, reference: current}
    for weight in args.prior_weights:
        priors[f"map x{weight:g}"] = lambda c, r, w=weight: c + w * r
        for spread in args.spreads:
            priors[f"spread {spread:g} x{weight:g}"] = lambda c, r, w=weight, s=spread: c + w * spread_logits(
                r, windows[s])
    env = gym.make("vla_ros/Push-v0", **policy.config.get("env", {}))
    base = env.unwrapped
    rows = []
    try:
        for seed in range(args.seed, args.seed + args.episodes):
            policy.reset()
            obs, info = env.reset(seed=seed)
            decided, done = None, False
            while not done:
                privileged = np.asarray(info["privileged"], dtype=np.float64)
                action = policy.normalized_action(obs["image"], info["command"], obs["proprio"])
                if policy.last_features is not decided:  # a decision: this frame was encoded
                    decided = policy.last_features
                    true = base.object_pixels()[base.target_index] / base.image_size * 2 - 1
                    with torch.no_grad():
                        text = decided[FEAT_TEXT].float()
                        current = fusion.logits(decided[FEAT_IMAGE_PATCHES].float(), text)
                        reference = fusion.logits(decided[FEAT_REFERENCE_PATCHES].float(), text)
                        row = {name: float(np.linalg.norm(fusion._readout(prior(current, reference))[2][0].numpy()
                                                          - true)) for name, prior in priors.items()}
                    row.update(moved_m=float(np.linalg.norm(privileged[3:5] - privileged[6:8])),
                               fingertip_m=float(np.linalg.norm(privileged[0:2] - privileged[3:5])))
                    rows.append(row)
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
    finally:
        env.close()
    table = summarise(rows, list(priors))
    print(format_table(table, list(table[0])))
    learned = fusion.reference_prior
    report = {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed,
              "learned_prior_weight": float(learned.detach()) if learned is not None else None, "rows": table}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
