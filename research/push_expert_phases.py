"""What the push expert says on a policy's own states, and how well it pushes when its actions are disturbed.

Usage: ``python -m research.push_expert_phases CHECKPOINT [--episodes 40] [--takeover 30] [--noise 0 0.3 0.6]
[--noise-episodes 200] [--json FILE]``

1. **Phases on the policy's states.** The checkpoint (``vla_ros.policy.Policy``, deciding as on the robot) pushes
   in scenes of the training split from seed 6,000,000 (``research.push_failures``); at every step the scripted
   expert names the waypoint it would head for from that state (``ScriptedExpert.act_with_phase``). Per outcome
   (``push_failures.OUTCOMES``), the share of the steps from first contact on that fall in each phase, and the
   median mean-squared gap between the policy's and the expert's actions in that phase. DAgger trains on exactly
   these labels, so a phase the policy reaches often but follows badly is a label it cannot fit.
2. **The expert taking over** (``--takeover STEP``): the policy acts for STEP steps, then the expert finishes the
   episode from wherever the policy left it: how many of the pushes the policy had not finished the expert's
   labels bring home (whether the labels of the policy's failure states lead anywhere).
3. **The expert under action noise.** The expert alone on the same scenes, Gaussian noise of each standard
   deviation added to its actions (clipped to [-1, 1]): success and median steps. How far a learner may stray
   from the expert's path before the expert's own labels no longer bring the push home.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from research.push_failures import OUTCOMES, PROBE_SEED, group_by_outcome, run_episode

PHASES = ("travel", "rise", "descend", "back_off", "realign", "push")


def policy_episode(env, policy, expert, seed: int) -> dict:
    """One push episode driven by the policy; per step the expert's phase and the action gap (from contact)."""
    labelled = []  # (phase, gap) of every step, in order

    def act(obs, info):
        expert_action, phase = expert.act_with_phase(info)
        action = policy.normalized_action(obs["image"], info["command"], obs["proprio"])
        labelled.append((phase, float(np.mean((np.asarray(action) - expert_action) ** 2))))
        return action

    policy.reset()
    episode = run_episode(env, act, seed)
    contact = episode["contact_step"]  # steps taken when the target had first moved TOUCH: later steps count
    return {"seed": seed, "outcome": episode["outcome"], "direction": episode["direction"],
            "after_contact": [] if contact is None else labelled[contact:]}


def phase_rows(episodes: list[dict]) -> list[dict]:
    """Per outcome seen: episodes, steps after contact, and per phase its share and median action gap."""
    groups = group_by_outcome(episodes)
    rows = []
    for outcome in OUTCOMES:
        steps = [step for episode in groups.get(outcome, []) for step in episode["after_contact"]]
        if not groups.get(outcome):
            continue
        counts = Counter(phase for phase, _ in steps)
        row = {"outcome": outcome, "episodes": len(groups[outcome]), "steps_after_contact": len(steps)}
        for phase in PHASES:
            gaps = [gap for name, gap in steps if name == phase]
            row[f"{phase}_share"] = counts[phase] / len(steps) if steps else 0.0
            row[f"{phase}_gap"] = float(np.median(gaps)) if gaps else float("nan")
        rows.append(row)
    return rows


def takeover(env, policy, expert, first_seed: int, episodes: int, step: int) -> dict:
    """The policy acts for ``step`` steps, the expert after that: pushes finished by each."""
    by_policy, taken_over, by_expert = 0, 0, 0
    for seed in range(first_seed, first_seed + episodes):
        taken = 0

        def act(obs, info):
            nonlocal taken
            taken += 1
            if taken <= step:
                return policy.normalized_action(obs["image"], info["command"], obs["proprio"])
            return expert.act(info)

        policy.reset()
        episode = run_episode(env, act, seed)
        success = episode["outcome"] == "success"
        if episode["steps"] <= step:
            by_policy += success
        else:
            taken_over += 1
            by_expert += success
    return {"takeover_step": step, "episodes": episodes, "finished_by_policy": by_policy,
            "taken_over": taken_over, "finished_by_expert": by_expert}


def noisy_expert(env, expert, first_seed: int, episodes: int, noise: float, rng) -> dict:
    """The expert's push success and median episode length with N(0, noise^2) added to every action."""

    def act(obs, info):
        action = expert.act(info)
        if noise > 0:
            action = np.clip(action + rng.normal(0.0, noise, action.shape), -1.0, 1.0).astype(np.float32)
        return action

    results = [run_episode(env, act, seed) for seed in range(first_seed, first_seed + episodes)]
    return {"noise": noise, "episodes": episodes,
            "success": float(np.mean([e["outcome"] == "success" for e in results])),
            "median_steps": float(np.median([e["steps"] for e in results]))}


def main(argv=None) -> dict:
    """Run both parts; print their tables and return the report."""
    import gymnasium as gym
    import torch

    import vla_ros.envs  # noqa: F401  (registers the envs)
    from vla_ros.envs.expert import ScriptedExpert
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.push_expert_phases",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="policy checkpoint folder (its env settings are used for both parts)")
    parser.add_argument("--episodes", type=int, default=40, help="push episodes of the policy (default 40)")
    parser.add_argument("--takeover", type=int, default=0,
                        help="also let the expert take over after this many policy steps (0: not run)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.6],
                        help="standard deviations of the expert's action noise (default 0 0.3 0.6)")
    parser.add_argument("--noise-episodes", type=int, default=200, help="expert episodes per noise level")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help=f"first scene seed (default {PROBE_SEED})")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    if any(noise < 0 for noise in args.noise):
        parser.error("--noise: standard deviations must be >= 0")
    torch.set_num_threads(1)
    policy = Policy.load(args.checkpoint)
    env = gym.make("vla_ros/Push-v0", **policy.config.get("env", {}))
    try:
        expert = ScriptedExpert(env.unwrapped)
        episodes = [policy_episode(env, policy, expert, seed) for seed in range(args.seed, args.seed + args.episodes)]
        handover = takeover(env, policy, expert, args.seed, args.episodes, args.takeover) if args.takeover else None
        rng = np.random.default_rng(0)
        noise_rows = [noisy_expert(env, expert, args.seed, args.noise_episodes, noise, rng) for noise in args.noise]
    finally:
        env.close()
    rows = phase_rows(episodes)
    print(format_table([{k: f"{v:.2f}" if isinstance(v, float) else v for k, v in row.items()} for row in rows],
                       list(rows[0])))
    if handover:
        print(format_table([handover], list(handover)))
    print(format_table(noise_rows, list(noise_rows[0])))
    report = {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "seed": args.seed,
              "phase_rows": rows, "takeover": handover, "noise_rows": noise_rows,
              "per_episode": [{k: v for k, v in e.items() if k != "after_contact"}
                              | {"phases_after_contact": dict(Counter(p for p, _ in e["after_contact"]))}
                              for e in episodes]}
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
