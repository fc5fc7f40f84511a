"""Where a reach/push policy departs from the scripted expert: action error and grounding error per task and phase.

Usage: ``python -m research.skills_error_probe CHECKPOINT [--episodes 100] [--seed 6000000] [--json FILE]``

Runs the checkpoint's own deterministic episodes (its task; a ``mixed`` checkpoint draws reach or push per
episode) with the expert labelling every state the policy visits, as a DAgger round does with beta 0. Each step
is put in the expert's phase (:meth:`vla_ros.envs.expert.ScriptedExpert.phase`: reach ``travel``/``descend``;
push ``travel``, ``rise``, ``descend``, ``push``). Per task and phase it reports the share of steps, the action
MSE against the expert's label (what imitation would have to fix on the learner's own states) and the grounding
error, the distance between the fusion's position estimate and the commanded object's true image position (in
image half-widths; large during ``push`` when the arm covers the object). Per task: episode success rate.
Seeds start at 6,000,000, apart from training, validation and evaluation scenes.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

PROBE_SEED = 6_000_000


def summarise(rows: dict[str, list]) -> dict:
    """``{task: {"steps", "action_mse", "grounding_error", "phases": {phase: {...}}}}`` from per-step rows."""
    tasks = np.asarray(rows["task"])
    phases = np.asarray(rows["phase"])
    squared = np.asarray(rows["action_sq"], dtype=float)
    grounding = np.asarray(rows["grounding"], dtype=float)
    report = {}
    for task in sorted(set(tasks)):
        in_task = tasks == task
        entry = {"steps": int(in_task.sum()), "action_mse": float(squared[in_task].mean()),
                 "grounding_error": float(np.nanmean(grounding[in_task])), "phases": {}}
        for phase in sorted(set(phases[in_task])):
            keep = in_task & (phases == phase)
            entry["phases"][phase] = {"share": float(keep.sum() / in_task.sum()),
                                      "action_mse": float(squared[keep].mean()),
                                      "grounding_error": float(np.nanmean(grounding[keep]))}
        report[task] = entry
    return report


def main(argv=None) -> dict:
    """Run the probe; print a table per task and phase and return the report."""
    import torch

    from vla_ros.policy.clip_vec_env import ClipFeatureVecEnv
    from vla_ros.policy.envs import EXPERT_ACTION, EXPERT_PHASE, TARGET_XY, make_vec_env
    from vla_ros.policy.policy import Policy
    from vla_ros.reporting import format_table, write_json

    parser = argparse.ArgumentParser(prog="python -m research.skills_error_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="policy checkpoint folder")
    parser.add_argument("--episodes", type=int, default=100, help="episodes (default 100)")
    parser.add_argument("--seed", type=int, default=PROBE_SEED, help=f"first scene seed (default {PROBE_SEED})")
    parser.add_argument("--num-envs", type=int, default=2, help="simulator envs (in process)")
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    args.num_envs = max(1, min(args.num_envs, args.episodes))
    policy = Policy.load(args.checkpoint)
    network, extractor = policy.network, policy.network.features_extractor
    raw = make_vec_env(policy.config["task"], args.num_envs, args.seed, vec_env="dummy", expert_labels=True,
                       **policy.config.get("env", {}))
    venv = ClipFeatureVecEnv.for_network(raw, network, policy.encoder, policy.normalizer,
                                         skill_reader=policy.command_skill_reader)
    rows: dict[str, list] = defaultdict(list)
    outcomes: dict[str, list[bool]] = defaultdict(list)
    started = args.num_envs
    active = np.ones(args.num_envs, bool)  # an env stops counting once the episodes are all started
    try:
        obs = venv.reset()
        current = list(venv.reset_infos)
        while active.any():
            with torch.no_grad():
                _, grounding = extractor.extract({k: torch.as_tensor(v) for k, v in obs.items()})
            actions, _ = network.predict(obs, deterministic=True)
            for i in np.flatnonzero(active):
                info = current[i]
                rows["task"].append(info["task"])
                rows["phase"].append(info[EXPERT_PHASE])
                rows["action_sq"].append(float(np.mean((np.clip(actions[i], -1, 1) - info[EXPERT_ACTION]) ** 2)))
                rows["grounding"].append(float(np.linalg.norm(grounding.xy[i].numpy() - info[TARGET_XY]))
                                         if grounding.xy is not None else float("nan"))
            obs, _, dones, infos = venv.step(actions)
            current = [venv.reset_infos[i] if dones[i] else infos[i] for i in range(len(infos))]
            for i in np.flatnonzero(dones & active):
                outcomes[infos[i]["task"]].append(bool(infos[i].get("is_success", False)))
                started += 1
                active[i] = started <= args.episodes
    finally:
        venv.close()
    report = {"checkpoint": str(args.checkpoint), "episodes": sum(map(len, outcomes.values())), "seed": args.seed,
              "success": {task: float(np.mean(v)) for task, v in outcomes.items()},
              "episodes_per_task": {task: len(v) for task, v in outcomes.items()}, "tasks": summarise(rows)}
    table = [{"task": task, "phase": phase, "share": f"{p['share']:.2f}", "action_mse": f"{p['action_mse']:.4f}",
              "grounding_error": f"{p['grounding_error']:.3f}"}
             for task, entry in report["tasks"].items() for phase, p in entry["phases"].items()]
    print(format_table(table, ["task", "phase", "share", "action_mse", "grounding_error"]))
    print("success: " + ", ".join(f"{t} {r:.3f} ({report['episodes_per_task'][t]} episodes)"
                                  for t, r in sorted(report["success"].items())))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
