"""How a policy's push episodes fail: never touched, pushed off the commanded direction, or pushed too little.

Usage: ``python -m research.push_failures CHECKPOINT [--episodes 100] [--seed 6000000] [--expert]
[--oracle-estimate] [--oracle-reference] [--json FILE]``

Runs the checkpoint (``vla_ros.policy.Policy``, deciding as on the robot: a chunked policy every E-th frame) on
push scenes of the training split, seeds from 6,000,000 (apart from training, validation and evaluation scenes),
or the scripted expert on the same scenes with ``--expert``. ``--oracle-estimate`` (a checkpoint with an object
locator) replaces the locator's map by the object's true image position: the policy with perfect perception of
each frame, which tells a perception failure from a policy one; ``--oracle-reference`` (with ``--oracle-estimate``)
also replaces the first frame's map, which a locator does not touch, by a Gaussian at the object's true starting
image position. Each episode's outcome, from the simulator's privileged state at its end:

- ``success``: the env's flag (moved >= 8 cm along the command, still on the table);
- ``fell``: the target left the table;
- ``untouched``: the target never moved 1 cm;
- ``off_direction``: moved >= 4 cm more than 45 degrees off the command (``vla-ros eval``'s wrong way);
- ``short``: the rest, moved along the command but less than 8 cm.

Per outcome: episodes, the median largest displacement along the command, the median of the fingertip's closest
horizontal approach to the target, the median step of first contact (the target moving 1 cm) and the fingertip's
median distance from the target at the end (a lost contact leaves it far). Then each outcome's share per commanded
direction.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

PROBE_SEED = 6_000_000
TOUCH = 0.01  # m the target must move to count as touched
OUTCOMES = ("success", "fell", "untouched", "off_direction", "short")


def classify(success: bool, fell: bool, largest_move: float, wrong_way: bool) -> str:
    """One of :data:`OUTCOMES` for an episode's end state."""
    if success:
        return "success"
    if fell:
        return "fell"
    if largest_move < TOUCH:
        return "untouched"
    return "off_direction" if wrong_way else "short"


def run_episode(env, act, seed: int) -> dict:
    """One push episode driven by ``act(obs, info) -> action``; its measurements."""
    from vla_ros.policy.evaluate import pushed_wrong_way

    obs, info = env.reset(seed=seed)
    largest_move, closest, contact_step, along = 0.0, np.inf, None, 0.0
    done, step = False, 0
    while not done:
        obs, _, terminated, truncated, info = env.step(act(obs, info))
        step += 1
        privileged = np.asarray(info["privileged"], dtype=np.float64)
        moved = privileged[3:5] - privileged[6:8]
        along = max(along, float(moved @ privileged[9:11]))
        largest_move = max(largest_move, float(np.linalg.norm(moved)))
        closest = min(closest, float(np.linalg.norm(privileged[0:2] - privileged[3:5])))
        if contact_step is None and largest_move >= TOUCH:
            contact_step = step
        done = terminated or truncated
    privileged = np.asarray(info["privileged"], dtype=np.float64)
    fell = bool(terminated and not info["is_success"])
    outcome = classify(bool(info["is_success"]), fell, largest_move, bool(pushed_wrong_way(info)))
    return {"seed": seed, "outcome": outcome, "steps": step, "largest_along_m": along,
            "closest_approach_m": closest, "contact_step": contact_step,
            "final_fingertip_to_target_m": float(np.linalg.norm(privileged[0:2] - privileged[3:5])),
            "direction": info["direction"]}


def run_episodes(env, act, first_seed: int, count: int, before_each) -> list[dict]:
    """``count`` episodes of :func:`run_episode` from ``first_seed`` (``before_each()`` first: the actor's reset).

    Closes ``env`` when done.
    """
    try:
        episodes = []
        for seed in range(first_seed, first_seed + count):
            before_each()
            episodes.append(run_episode(env, act, seed))
        return episodes
    finally:
        env.close()


def group_by_outcome(episodes: list[dict]) -> dict[str, list[dict]]:
    """The episodes of each outcome (a missing outcome maps to an empty list)."""
    groups = defaultdict(list)
    for episode in episodes:
        groups[episode["outcome"]].append(episode)
    return groups


def summarise(episodes: list[dict]) -> list[dict]:
    """One row per outcome seen, in :data:`OUTCOMES` order."""
    groups = group_by_outcome(episodes)
    rows = []
    for outcome in OUTCOMES:
        group = groups.get(outcome, [])
        if not group:
            continue
        contacts = [e["contact_step"] for e in group if e["contact_step"] is not None]
        rows.append({"outcome": outcome, "episodes": len(group), "share": len(group) / len(episodes),
                     "median_along_m": float(np.median([e["largest_along_m"] for e in group])),
                     "median_closest_m": float(np.median([e["closest_approach_m"] for e in group])),
                     "median_contact_step": float(np.median(contacts)) if contacts else float("nan"),
                     "median_final_distance_m": float(np.median([e["final_fingertip_to_target_m"]
                                                                 for e in group]))})
    return rows


def by_direction(episodes: list[dict]) -> dict[str, dict]:
    """Per commanded direction: episodes and the share of each outcome."""
    table = {}
    for direction in sorted({e["direction"] for e in episodes}):
        group = [e["outcome"] for e in episodes if e["direction"] == direction]
        table[direction] = {"episodes": len(group), **{o: group.count(o) / len(group) for o in OUTCOMES}}
    return table


def oracle_logits(coordinates, xy, batch: int):
    """(batch, P) logits of a Gaussian of 0.5 patches around the image position ``xy`` over the patch centres."""
    import torch

    from vla_ros.grounding.object_locator import gaussian_logits

    grid_side = round(coordinates.shape[0] ** 0.5)
    centre = torch.as_tensor(xy).reshape(1, 2).to(coordinates)
    return gaussian_logits(coordinates, centre, grid_side, 0.5).expand(batch, -1)


def oracle_locator():
    """A module standing in for a fusion's object locator: :func:`oracle_logits` around ``xy``.

    ``xy`` is set to the object's true image position before each decision.
    """
    import torch

    class OracleLocator(torch.nn.Module):
        xy = None

        def forward(self, patches, text, current, reference, coordinates):
            return oracle_logits(coordinates, self.xy, patches.shape[0])

    return OracleLocator()


def oracle_reference_maps(fusion):
    """Stands in for ``fusion.maps``: the first frame's map becomes :func:`oracle_logits` around ``start_xy``.

    The fusion's own maps otherwise (its object locator, which :func:`oracle_locator` replaces, reads the current
    frame). ``start_xy`` is set to the object's true image position at the episode's start.
    """
    from vla_ros.grounding.fusion import RegionMaps

    maps = fusion.maps

    class OracleReference:
        start_xy = None

        def __call__(self, patches, text, reference_patches=None):
            own = maps(patches, text, reference_patches)
            start = oracle_logits(fusion.coordinates, self.start_xy, patches.shape[0])
            # the fusion scales the reference map by its temperature: these logits are what it then reads
            return RegionMaps(own.current, start / fusion.log_temperature.exp(), own.located)

    return OracleReference()


def main(argv=None) -> dict:
    """Run the episodes; print the table and return the report."""
    import gymnasium as gym
    import torch

    import vla_ros.envs  # noqa: F401  (registers the envs)
    from vla_ros.envs.expert import ScriptedExpert
    from vla_ros.policy.envs import target_image_xy
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_failures", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="policy checkpoint folder (its env settings are used with --expert too)")
    parser.add_argument("--episodes", type=int, default=100, help="push episodes (default 100)")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help=f"first scene seed (default {PROBE_SEED})")
    parser.add_argument("--expert", action="store_true", help="the scripted expert acts instead of the policy")
    parser.add_argument("--oracle-estimate", action="store_true",
                        help="an object-locator checkpoint reads the object's true image position instead of its "
                             "locator's map (perfect perception of the current frame, for analysis)")
    parser.add_argument("--oracle-reference", action="store_true",
                        help="with --oracle-estimate, the first frame's map (the reference estimate, which the locator "
                             "does not touch) reads the object's true starting image position too: perfect "
                             "perception of both frames")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    env = gym.make("vla_ros/Push-v0", **policy.config.get("env", {}))
    expert = ScriptedExpert(env.unwrapped)
    oracle = None
    if args.oracle_estimate:
        fusion = policy.network.features_extractor.fusion
        if getattr(fusion, "object_locator", None) is None:
            parser.error("--oracle-estimate needs a checkpoint with an object locator")
        oracle = fusion.object_locator = oracle_locator()
    reference = None
    if args.oracle_reference:
        if oracle is None:
            parser.error("--oracle-reference needs --oracle-estimate (perfect perception of the first frame only "
                         "is not a question asked yet)")
        reference = fusion.maps = oracle_reference_maps(fusion)

    def act(obs, info):
        if args.expert:
            return expert.act(info)
        if oracle is not None:
            oracle.xy = torch.as_tensor(target_image_xy(info, env.unwrapped.image_size))
        if reference is not None and reference.start_xy is None:  # the episode's first frame
            reference.start_xy = target_image_xy(info, env.unwrapped.image_size)
        return policy.normalized_action(obs["image"], info["command"], obs["proprio"])

    def reset() -> None:
        policy.reset()
        expert.reset()
        if reference is not None:
            reference.start_xy = None

    episodes = run_episodes(env, act, args.seed, args.episodes, reset)
    rows, directions = summarise(episodes), by_direction(episodes)
    print(format_table(rows, list(rows[0])))
    print(format_table([{"direction": d, **{k: f"{v:.2f}" if k != "episodes" else v for k, v in entry.items()}}
                        for d, entry in directions.items()], ["direction", "episodes", *OUTCOMES]))
    report = {"checkpoint": str(args.checkpoint), "actor": "expert" if args.expert else "policy",
              "oracle_estimate": bool(args.oracle_estimate), "oracle_reference": bool(args.oracle_reference),
              "episodes": args.episodes, "seed": args.seed, "rows": rows, "by_direction": directions,
              "per_episode": episodes}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
